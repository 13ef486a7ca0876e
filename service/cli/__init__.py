"""The `rollcall` command line (service.cli.main is the entry point)."""
