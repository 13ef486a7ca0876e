"""The views analysts query, built from the event store by replayable projections."""
