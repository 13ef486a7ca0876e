"""Secrets and access: what an analyst may not do, and what no log line may hold.

Run last, so its log scan covers every process the drill started before it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

import httpx
import psycopg
from psycopg import sql

from service.eventstore.roles import grant_analyst
from service.jte.sender import post_all
from service.jte.simulator import SimulationOptions
from tests.drill.harness import EMAIL, Workspace
from tests.drill.report import Finding, Size
from tests.drill.snapshot import wait_until_caught_up

ANALYST: Final = "drill_analyst"
_GROUPS: Final = (
    "SELECT g.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
    "JOIN pg_roles m ON m.oid = a.member WHERE m.rolname = %s"
)
_ANALYTICS_VIEWS: Final = (
    "SELECT viewname FROM pg_views WHERE schemaname = 'analytics' ORDER BY viewname"
)
# Every JTE body has these keys; no log line should.
_BODY_MARKERS: Final = ('"attendee"', '"occurredAt"', '"firstName"')
# What the analyst role must not be able to do, each on its own.
_FORBIDDEN_SQL: Final = (
    "SELECT state FROM rollcall.deliveries_events LIMIT 1",
    "SELECT * FROM rollcall.api_tokens LIMIT 1",
    "SELECT * FROM rollcall_views.roster_v1 LIMIT 1",
    "SELECT pg_read_file('postgresql.conf')",
    "INSERT INTO analytics.payments (event, entry_key) VALUES ('x', 'y')",
    "DELETE FROM analytics.roster",
    "CREATE TABLE analytics.mine (x int)",
)


def access(ws: Workspace, size: Size) -> Finding:
    """Analyst tokens cannot operate, the analyst role cannot read raw deliveries nor another
    database's views, and no log line of the whole drill holds a secret, a token or a raw
    body."""
    finding = Finding(scenario="access", load="", faults="analyst token and SQL role probes")
    with ws.database("access") as url:
        server = ws.serve("access", url).start()
        deliveries = ws.day(SimulationOptions(seed=7, attendees=100))
        asyncio.run(post_all(server.url, deliveries, concurrency=4, retry=True, timeout=10))
        http_probes = _token_probes(finding, ws, server.url, url)
        sql_probes = _role_probes(finding, ws, url)
        server.stop()
    lines, files = _scan_logs(finding, ws)
    finding.bad_inputs = http_probes + sql_probes
    finding.load = f"{lines:,} log lines in {files} files"
    finding.figures = (
        f"{http_probes} HTTP probes with read/no/forged tokens, {sql_probes} SQL probes as "
        f"the analyst role (in its own database and in another of the server); "
        f"{lines:,} log lines searched for {len(ws.secrets)} secrets, "
        f"{len(ws.tokens)} tokens, {len(ws.emails):,} attendee emails and body keys: none found"
        if finding.held
        else "; ".join(finding.broken)
    )
    return finding


def _token_probes(finding: Finding, ws: Workspace, base: str, database_url: str) -> int:
    read, admin = ws.token(database_url, "read"), ws.token(database_url, "admin")
    forged = read[:-4] + ("AAAA" if not read.endswith("AAAA") else "BBBB")
    rebuild = "/v1/projections/roster/rebuild"
    probes: list[tuple[str, str, str | None, int]] = [
        ("POST", rebuild, read, 403),
        ("POST", rebuild, None, 401),
        ("POST", rebuild, forged, 401),
        ("POST", rebuild, admin.upper(), 401),
        ("GET", "/v1/events/default/roster", None, 401),
        ("GET", "/v1/events/default/roster", forged, 401),
        ("GET", "/v1/events/default/roster", read, 200),
        ("GET", "/v1/projections", read, 200),
    ]
    with httpx.Client(base_url=base, timeout=10) as client:
        for method, path, token, expected in probes:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            answer = client.request(method, path, headers=headers)
            finding.check(
                answer.status_code == expected,
                f"{method} {path} with {_which(token, read, admin)} token: "
                f"{answer.status_code}, not {expected}",
            )
            for secret in ws.secrets | ws.tokens:
                finding.check(secret not in answer.text, f"{method} {path} answered a secret")
    return len(probes)


def _which(token: str | None, read: str, admin: str) -> str:
    return {None: "no", read: "a read"}.get(token, "a forged")


def _role_probes(finding: Finding, ws: Workspace, database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        password = grant_analyst(conn, ANALYST)
    ws.secrets.add(password)
    params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(database_url)
    params.update(user=ANALYST, password=password)
    try:
        with psycopg.connect(**params, autocommit=True) as analyst:
            rows = analyst.execute("SELECT count(*) FROM analytics.roster").fetchone()
            finding.check(bool(rows and rows[0] > 0), "the analyst role cannot read the roster")
            finding.check(
                refusal(analyst, "CREATE TABLE analytics.mine (x int)") == "read-only",
                "the analyst's sessions are not read-only",
            )
            # The session's read-only default is the analyst's own to turn off: only a missing
            # privilege counts as a refusal (a missing table or a syntax error would not).
            analyst.execute("SET default_transaction_read_only = off")
            for statement in _FORBIDDEN_SQL:
                why = refusal(analyst, statement)
                finding.check(why == "no privilege", f"the analyst role's {statement}: {why}")
        with ws.database("access_other") as other:
            # Served after the grant, so its views are published while the analyst exists.
            server = ws.serve("access-other", other).start()
            day = ws.day(SimulationOptions(seed=8, attendees=20))
            asyncio.run(post_all(server.url, day, concurrency=4, retry=True, timeout=10))
            wait_until_caught_up(other, 60)
            server.stop()
            others = other_database_probes(finding, ANALYST, password, other)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            groups = [g for (g,) in conn.execute(_GROUPS, (ANALYST,)).fetchall()]
            conn.execute(f"DROP OWNED BY {ANALYST}")
            conn.execute(f"DROP ROLE {ANALYST}")
            for group in groups:
                conn.execute(
                    sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(group))
                )
    return 1 + len(_FORBIDDEN_SQL) + others


def refusal(conn: psycopg.Connection[Any], statement: str) -> str:
    """How PostgreSQL refused `statement`: "no privilege", "read-only", another error's class
    name, or "ran" when it was not refused at all."""
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return "no privilege"
    except psycopg.errors.ReadOnlySqlTransaction:
        return "read-only"
    except psycopg.errors.Error as error:
        return type(error).__name__
    return "ran"


def other_database_probes(finding: Finding, login: str, password: str, other_url: str) -> int:
    """Record on `finding` each view of `other_url`'s analytics schema that `login`, an
    analyst of another database of the same server, can read; how many were probed."""
    with psycopg.connect(other_url) as conn:
        views = [v for (v,) in conn.execute(_ANALYTICS_VIEWS).fetchall()]
        rows = conn.execute("SELECT count(*) FROM analytics.roster").fetchone()
    finding.check(bool(views) and bool(rows and rows[0]), "the other database has no views")
    params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(other_url)
    params.update(user=login, password=password)
    for view in views:
        try:
            with psycopg.connect(**params, autocommit=True) as analyst:
                analyst.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("analytics", view))
                )
        except psycopg.errors.InsufficientPrivilege:
            continue  # refused, as it should be
        except psycopg.OperationalError as error:
            if "permission denied" in str(error):
                continue  # may not even connect, as it should be
            raise
        finding.check(False, f"an analyst of another database reads analytics.{view} here")
    return len(views)


def _scan_logs(finding: Finding, ws: Workspace) -> tuple[int, int]:
    """Every line of every log the drill's processes and its PostgreSQL wrote."""
    files = [*ws.logs(), *_postgres_logs(ws)]
    return scan_logs(finding, ws, files), len(files)


def scan_logs(finding: Finding, ws: Workspace, files: list[Path]) -> int:
    """Record on `finding` each line of `files` holding a secret, a token, a raw body or an
    attendee's email; how many lines were read."""
    needles = sorted({*ws.secrets, *ws.tokens, *(s.removeprefix("whsec_") for s in ws.secrets)})
    lines = 0
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            lines += 1
            where = f"{path.name}:{number}"
            if any(needle in line for needle in needles):
                finding.check(False, f"{where} holds a secret or token")
            if any(marker in line for marker in _BODY_MARKERS):
                finding.check(False, f"{where} holds a raw body")
            if any(email in ws.emails for email in EMAIL.findall(line)):
                finding.check(False, f"{where} holds an attendee's email")
    return lines


def _postgres_logs(ws: Workspace) -> list[Path]:
    log = ws.root / "pg" / "postgres" / "log"
    return [log] if log.exists() else []
