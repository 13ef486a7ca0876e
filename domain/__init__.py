"""Pure domain of rollcall: interpreting deliveries and the folds that build the views.

Nothing here does I/O or imports a framework; every function can be tested with plain values.
"""
