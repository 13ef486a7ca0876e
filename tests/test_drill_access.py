"""The drill's secrets-and-access scenario, at CI size, and proof that its log scan bites."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
from psycopg import sql

from projections.runner import Runner, ensure_views
from service.eventstore.roles import grant_analyst
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from tests.drill import QUICK, run
from tests.drill.access import access, other_database_probes
from tests.drill.harness import Workspace
from tests.drill.report import Finding
from tests.helpers import (
    analyst_groups,
    delivery,
    drill_directory,
    drop_roles,
    recorded,
)


def test_access_holds() -> None:
    with drill_directory() as root:
        [finding] = run(["access"], QUICK, root=root)
    assert finding.held, finding.broken
    assert finding.bad_inputs >= 16
    assert "none found" in finding.figures


def test_the_log_scan_finds_a_leaked_secret_token_and_body() -> None:
    with drill_directory() as root:
        ws = Workspace(root)
        ws.start()
        try:
            ws.tokens.add("rc_planted-token")
            (root / "leaky.log").write_text(
                f"fine line\nsecret {ws.default.secrets[0]}\nauth rc_planted-token\n"
                '{"event": "AttendeeRegistered", "attendee": {"id": "a-1"}}\n'
            )
            finding = access(ws, QUICK)
        finally:
            ws.close()
    assert not finding.held
    assert any("leaky.log:2 holds a secret" in b for b in finding.broken), finding.broken
    assert any("leaky.log:3 holds a secret or token" in b for b in finding.broken)
    assert any("leaky.log:4 holds a raw body" in b for b in finding.broken)


def test_the_other_database_probe_finds_a_readable_view(
    server_url: str, new_database: Callable[[], str]
) -> None:
    granted, other = new_database(), new_database()
    login = f"drill_{uuid.uuid4().hex[:8]}"
    ensure_views(granted)
    with psycopg.connect(granted, autocommit=True) as conn:
        password = grant_analyst(conn, login, "probe-password")
    groups = analyst_groups(server_url, login)
    try:
        store = DeliveryStore(other)
        store.append([recorded(delivery(attendee_id="b-1"))])
        store.close()
        Runner(other, SOURCE).catch_up()
        kept = Finding(scenario="access", load="", faults="")
        probed = other_database_probes(kept, login, password, other)
        assert kept.held and probed >= 5, kept.broken
        # What the server-wide group amounted to: the other database's views granted to it.
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "GRANT USAGE ON SCHEMA analytics TO {0}; "
                    "GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO {0}"
                ).format(sql.Identifier(login))
            )
        broken = Finding(scenario="access", load="", faults="")
        other_database_probes(broken, login, password, other)
    finally:
        drop_roles(server_url, [granted, other], [login, *groups])
    assert not broken.held
    assert any("reads analytics.roster here" in b for b in broken.broken), broken.broken
