"""The rollcall service: webhook intake, the event store, the analyst API and the CLI."""
