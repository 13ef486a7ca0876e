"""rollcall's promises at intake and in the API, each checked so that breaking it fails a test:
DESIGN's intake table row by row (exact body, exactly what was stored), a 2xx only after the
commit, a duplicate stored once across replicas, 503 + Retry-After when the database is down,
and no secret or personal value in the logs of the rejection, quarantine, writer-failure and
configuration-reload paths (the autouse `service_logs` fixture scans every test's lines)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from service.config import EventsWatcher, load_settings
from tests.conftest import LogCapture, leaks
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import (
    SECRET,
    RunningService,
    api_token,
    bearer,
    delivery,
    jte_headers,
    stored_rows,
    token_headers,
    until,
)
from tests.test_intake import _set_connections

PERSON = {
    "id": "p-1",
    "email": "zofia.wojcik@example.com",
    "firstName": "Zofia",
    "lastName": "Kowalczyk",
}
BODY = json.dumps({"event": "AttendeeRegistered", "id": "row-1", "attendee": PERSON}).encode()
MARKED = "fail-at-commit"


@pytest.fixture
async def client(service: RunningService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        yield client


def _json(content_type: str = "application/json") -> httpx.Headers:
    headers = token_headers()
    headers["content-type"] = content_type
    return headers


# Each row of DESIGN's "Responses at intake": what is sent, the exact answer, what is stored
# afterwards (bodies, oldest first). `BODY` was accepted before each case is sent.
ROWS: list[tuple[str, str, bytes, httpx.Headers, int, dict[str, Any], list[bytes]]] = [
    (
        "accepted",
        "/webhooks/jte",
        delivery(attendee_id="p-2", delivery_id="row-2"),
        token_headers(),
        200,
        {"status": "accepted", "position": 2},
        [BODY, delivery(attendee_id="p-2", delivery_id="row-2")],
    ),
    ("duplicate", "/webhooks/jte", BODY, token_headers(), 200, {"status": "duplicate"}, [BODY]),
    (
        "quarantined",
        "/webhooks/jte",
        b'{"event": "AttendeeRegistered", "id": "row-3", "attendee": {"email": "x@y.pl"',
        token_headers(),
        202,
        {"status": "quarantined"},
        [BODY, b'{"event": "AttendeeRegistered", "id": "row-3", "attendee": {"email": "x@y.pl"'],
    ),
    (
        "unauthorized",
        "/webhooks/jte",
        delivery(attendee_id="p-4"),
        token_headers("not the secret"),
        401,
        {"error": "unauthorized", "message": "secret does not match"},
        [BODY],
    ),
    (
        "unsigned",
        "/webhooks/jte",
        delivery(attendee_id="p-4"),
        jte_headers({}),
        401,
        {"error": "unauthorized", "message": "no secret or signature header"},
        [BODY],
    ),
    (
        "unknown-event",
        "/webhooks/jte/no-such-conf",
        delivery(attendee_id="p-5"),
        token_headers(),
        404,
        {"error": "unknown_event", "message": "no JTE event 'no-such-conf' is configured"},
        [BODY],
    ),
    (
        "too-large",
        "/webhooks/jte",
        json.dumps(
            {"event": "AttendeeRegistered", "attendee": {"id": "p", "x": "y" * 2000}}
        ).encode(),
        token_headers(),
        413,
        {"error": "body_too_large", "message": "the body is over the 1000-byte limit"},
        [BODY],
    ),
    (
        "not-json",
        "/webhooks/jte",
        delivery(attendee_id="p-6"),
        _json("text/plain"),
        415,
        {"error": "unsupported_media_type", "message": "the body must be application/json"},
        [BODY],
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "answer", "stored"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
async def test_every_row_of_the_intake_table(
    start_service: Callable[..., RunningService],
    database_url: str,
    path: str,
    body: bytes,
    headers: httpx.Headers,
    status: int,
    answer: dict[str, Any],
    stored: list[bytes],
) -> None:
    service = start_service(body_limit=1000)
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        first = await client.post("/webhooks/jte", content=BODY, headers=token_headers())
        assert (first.status_code, first.json()) == (200, {"status": "accepted", "position": 1})
        got = await client.post(path, content=body, headers=headers)
        assert (got.status_code, got.json()) == (status, answer)
    assert [row["body"] for row in stored_rows(database_url)] == stored


async def test_database_unavailable_row_503_retry_after_nothing_stored(
    start_service: Callable[..., RunningService], database_url: str, server_url: str
) -> None:
    service = start_service(store_timeout=5.0, retry_after_seconds=7)
    name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        _set_connections(server_url, name, allowed=False)
        try:
            got = await client.post("/webhooks/jte", content=BODY, headers=token_headers())
        finally:
            _set_connections(server_url, name, allowed=True)
    assert (got.status_code, got.json(), got.headers["retry-after"]) == (
        503,
        {"error": "unavailable", "message": "the event store is unavailable; retry later"},
        "7",
    )
    assert stored_rows(database_url) == []


# --- a 2xx only after the commit ------------------------------------------------------------

FAIL_AT_COMMIT = f"""
CREATE FUNCTION public.fail_marked_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF position('"delivery_id":"{MARKED}"' IN convert_from(NEW.state, 'UTF8')) > 0 THEN
        RAISE EXCEPTION 'the test refuses this commit';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER fail_marked_delivery AFTER INSERT ON rollcall.deliveries_events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.fail_marked_delivery();
"""


async def test_a_2xx_only_after_commit(
    start_service: Callable[..., RunningService], database_url: str, log_secrets: set[str]
) -> None:
    # A deferred constraint trigger fails the COMMIT (not the INSERT) of any transaction that
    # holds the marked delivery: everything before the commit succeeded, so a writer that
    # answered before committing would answer 200 for a delivery that is not stored.
    log_secrets.update(PERSON.values())
    service = start_service()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(FAIL_AT_COMMIT)
    marked = json.dumps({"event": "AttendeeRegistered", "id": MARKED, "attendee": PERSON}).encode()
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        alone = await client.post("/webhooks/jte", content=marked, headers=token_headers())
        assert (alone.status_code, alone.json()["error"]) == (503, "unavailable")
        assert alone.headers["retry-after"] == str(service.settings.retry_after_seconds)
        assert stored_rows(database_url) == []
        # In company (shared batches): every 2xx is stored, the marked one never.
        bodies = [
            marked,
            *(delivery(attendee_id=f"n-{i}", delivery_id=f"n-{i}") for i in range(40)),
        ]
        answers = await asyncio.gather(
            *(client.post("/webhooks/jte", content=b, headers=token_headers()) for b in bodies)
        )
    stored = {row["body"] for row in stored_rows(database_url)}
    for body, answer in zip(bodies, answers, strict=True):
        if answer.status_code == 200:
            assert body in stored
        else:
            assert (answer.status_code, body in stored) == (503, False)
    assert answers[0].status_code == 503 and marked not in stored
    assert len(stored) == 40, "neighbours of the failing delivery are stored"
    # The writer-failure path logged (and the autouse scan found nothing personal in it).


async def test_a_duplicate_is_stored_once_across_two_replicas_under_concurrency(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    replicas = [start_service(), start_service()]
    bodies = [delivery("AttendeeCheckedIn", f"c-{i}", delivery_id=f"c-{i}") for i in range(60)]
    clients = [httpx.AsyncClient(base_url=r.url, timeout=60) for r in replicas]
    try:
        # Every delivery sent three times to each replica at once.
        sends = [
            client.post("/webhooks/jte", content=body, headers=token_headers())
            for body in bodies
            for client in clients
            for _ in range(3)
        ]
        answers = await asyncio.gather(*sends)
    finally:
        for client in clients:
            await client.aclose()
    assert Counter(a.json()["status"] for a in answers) == {"accepted": 60, "duplicate": 300}
    rows = stored_rows(database_url)
    assert sorted(row["body"] for row in rows) == sorted(bodies)
    accepted = sorted(a.json()["position"] for a in answers if a.json()["status"] == "accepted")
    assert accepted == [row["position"] for row in rows]


# --- the analyst API while the database is down ---------------------------------------------

# Every read that meets the database (`/v1/events` answers from the configuration).
READS = [
    "/v1/events/default/roster",
    "/v1/events/default/roster?format=csv",
    "/v1/events/default/attendees/a-1",
    "/v1/events/default/occupancy",
    "/v1/events/default/occupancy?at=2026-05-14T10:00:00Z",
    "/v1/events/default/occupancy/timeline",
    "/v1/events/default/check-ins",
    "/v1/events/default/payments",
    "/v1/events/default/payments/summary",
    "/v1/projections",
]


async def test_the_analyst_api_answers_503_with_retry_after_when_the_database_is_down(
    start_service: Callable[..., RunningService], database_url: str, server_url: str
) -> None:
    service = start_service()
    name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    token = api_token(database_url, "read")
    async with httpx.AsyncClient(base_url=service.url, timeout=60, headers=bearer(token)) as client:
        assert (
            await client.post("/webhooks/jte", content=delivery(), headers=token_headers())
        ).status_code == 200
        wait_until_caught_up(database_url)
        for path in READS:
            assert (await client.get(path)).status_code == 200, path
        _set_connections(server_url, name, allowed=False)
        try:
            down = {}
            for path in READS:
                try:
                    down[path] = await client.get(path)
                except httpx.HTTPError as error:
                    raise AssertionError(f"{path}: {error!r}") from error
        finally:
            _set_connections(server_url, name, allowed=True)

        async def answers_again() -> bool:
            return (await client.get("/v1/events/default/roster")).status_code == 200

        await until(answers_again, 60)
    for path, answer in down.items():
        # The token was checked (and cached) before: every read meets the database.
        assert answer.status_code == 503, (path, answer.status_code, answer.text)
        assert answer.headers["retry-after"] == "5", path
        assert answer.json()["error"] == "unavailable", path


# --- logs on the rejection, quarantine, writer-failure and reload paths ---------------------


async def test_rejection_and_quarantine_paths_log_no_secret_or_personal_data(
    client: httpx.AsyncClient, service_logs: LogCapture, log_secrets: set[str]
) -> None:
    wrong = "forged secret: S3cr3t-typed-by-an-attacker"
    log_secrets.update({wrong, *PERSON.values()})
    for headers in (
        token_headers(wrong),
        jte_headers({"authorization": f"Bearer {wrong}"}),
        jte_headers({"x-webhook-signature": "sha256=" + "0" * 64}),
    ):
        refused = await client.post("/webhooks/jte", content=BODY, headers=headers)
        assert refused.status_code == 401 and wrong not in refused.text
    unreadable = json.dumps({"event": "AttendeeRegistered", "attendee": {**PERSON, "id": None}})
    quarantined = await client.post("/webhooks/jte", content=unreadable, headers=token_headers())
    assert quarantined.status_code == 202
    assert any("rejected delivery" in line for line in service_logs.lines), service_logs.lines


async def test_config_reload_paths_log_no_secret(
    start_service: Callable[..., RunningService],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    service_logs: LogCapture,
    log_secrets: set[str],
) -> None:
    old, new = "first organiser secret 1111", "rotated organiser secret 2222"
    log_secrets.update({old, new})
    config = tmp_path / "rollcall.toml"
    config.write_text(f'[events.conf]\nsecrets = ["{old}"]\n')
    monkeypatch.setenv("ROLLCALL_CONFIG", str(config))
    monkeypatch.setenv("ROLLCALL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", database_url)
    events = load_settings().events
    service = start_service(events=events, config=config)
    broken = [
        f'[events.conf]\nsecrets = ["{new}"\n',  # unterminated: TOML cannot parse it
        f'[events.conf]\nsecrets = "{new}"\n',  # a string where a list belongs
    ]
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:

        async def post(secret: str) -> int:
            answer = await client.post(
                "/webhooks/jte/conf",
                content=delivery(attendee_id="r"),
                headers=token_headers(secret),
            )
            return answer.status_code

        for n, text in enumerate(broken, start=1):
            config.write_text(text + "#" * n)  # a new size, so the watcher sees a change

            async def refused_to_reload(times: int = n) -> bool:
                # A request makes the watcher look at the file (at most once a second).
                assert await post(old) == 200, "the events in force stay as they were"
                return _count(service_logs, "configuration not reloaded") >= times

            await until(refused_to_reload, 30)
        config.write_text(f'[events.conf]\nsecrets = ["{new}"]\n')

        async def rotated() -> bool:
            return await post(new) == 200

        await until(rotated, 30)
        assert await post(old) == 401
    assert _count(service_logs, "configuration reloaded") == 1


def test_a_secret_typed_into_the_wrong_field_is_not_logged_on_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service_logs: LogCapture
) -> None:
    secret = "organiser secret in the wrong field 3333"
    config = tmp_path / "rollcall.toml"
    config.write_text('[events.conf]\nsecrets = ["first secret 4444"]\n')
    monkeypatch.setenv("ROLLCALL_CONFIG", str(config))
    monkeypatch.setenv("ROLLCALL_DATA_DIR", str(tmp_path))
    watcher = EventsWatcher(load_settings())
    config.write_text(f'[events.conf]\nsecrets = ["first secret 4444"]\nmode = "{secret}"\n')
    watcher._checked = float("-inf")  # due for a look now, without waiting out its second
    assert watcher.event("conf") is not None, "the events in force stay"
    assert _count(service_logs, "configuration not reloaded") == 1
    # (The autouse scan does not know this test's secret: checked here, directly.)
    assert leaks(service_logs.lines, {secret}) == []


def _count(capture: LogCapture, text: str) -> int:
    return sum(text in line for line in capture.lines)


# --- checks of the checker: the log scan itself ---------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        f"verified with {SECRET}",
        "token rc_" + "A" * 43,
        "from ola.nowak@example.com",
        "attendee Kowalczyk checked in",
        "standard secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ],
)
def test_the_log_scan_catches_a_leak_on_any_service_logger(message: str) -> None:
    # A mutant: a service module that logs what it must not. The scan must name the line.
    # (Records are handed to a capture of their own, not logged: this test's autouse scan
    # would rightly fail it.)
    capture = LogCapture()
    for name in ("rollcall.intake", "httpx"):  # httpx: the test client's, not the service's
        record = logging.getLogger(name).makeRecord(
            name, logging.INFO, __file__, 0, "delivery %s", (message,), None
        )
        capture.handle(record)
    assert leaks(capture.lines, {SECRET}) == [f"rollcall.intake INFO delivery {message}"]
    assert leaks(["rollcall.intake INFO delivery d-1 stored at 3"], {SECRET}) == []


def test_the_log_scan_fixture_fails_a_test_that_leaks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a subprocess: the leaky test's record must not reach this process's own scan.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent.parent))
    pytester.makeconftest("from tests.conftest import *  # noqa: F403\n")
    pytester.makepyfile(
        "import logging\n"
        "def test_leaky():\n"
        "    logging.getLogger('rollcall.writer').error('could not store %s', 'rc_' + 'x' * 40)\n"
        "def test_clean():\n"
        "    logging.getLogger('rollcall.writer').error('could not store d-1')\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*log lines hold secret or personal data*"])
