"""The event store: where verified deliveries are kept (PostgreSQL, through eventsourcing), the
server and roles behind it, and the adapter through which the projections read it."""
