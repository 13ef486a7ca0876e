"""The live runner's batches on views that grow from nothing: each statement is planned for the
tables as they are, so loading a batch's attendees stays a key lookup however large the
history has grown (a plan cached while it was empty scanned all of it for every batch, and
the live lag reached seconds until autovacuum's next ANALYZE)."""

from __future__ import annotations

import psycopg

from projections.runner import Runner
from projections.schema import live_version
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from service.jte.simulator import SimulationOptions, simulate
from tests.helpers import recorded, wait_until


def test_batches_read_a_growing_history_by_key_not_by_scanning_it(database_url: str) -> None:
    day = simulate(SimulationOptions(seed=7, attendees=400))
    bodies = [recorded(d.body, d.delivery_id) for d in day if d.expect == "accepted"]
    store = DeliveryStore(database_url)
    try:
        store.append(bodies)
    finally:
        store.close()
    # Live-sized batches, with autovacuum far from analyzing the new tables in between.
    Runner(database_url, SOURCE, batch_size=20).catch_up()
    with psycopg.connect(database_url, autocommit=True) as conn:
        version = live_version(conn, "roster_history")
        assert version is not None
        table = f"roster_history_v{version.version}"
        stored = conn.execute(f"SELECT count(*) FROM rollcall_views.{table}").fetchone()
        assert stored is not None and stored[0] > 1000

        def counted() -> tuple[int, int] | None:
            # The runner's backend reports its table statistics when it ends.
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT n_tup_ins + n_tup_upd, seq_tup_read FROM pg_stat_user_tables "
                "WHERE schemaname = 'rollcall_views' AND relname = %s",
                (table,),
            ).fetchone()
            return row if row is not None and row[0] >= stored[0] else None

        wait_until(counted)
        found = counted()
        assert found is not None
        # While the table is small a scan is the cheaper plan, so some are fine (about 3 times
        # its rows in all here); a scan for every batch read it 38 times over.
        assert found[1] < 10 * stored[0], f"{found[1]} rows read by scans of {stored[0]}"
