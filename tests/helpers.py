"""Test support: settings, the in-process HTTP server, signing, reading the store with plain SQL.

Signatures here are computed independently of rollcall's own code (hashlib, hmac, and the
`standardwebhooks` reference package), so a symmetric bug cannot pass unnoticed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from psycopg import sql
from uvicorn.server import ServerState

from domain.deliveries import delivery_key
from domain.interpret import PARSER_VERSION
from service import tokens
from service.config import EventConfig, Settings
from service.eventstore import database, keys
from service.eventstore.store import DeliveryRecorded
from service.http.app import create_app
from service.http.server import guarded
from service.tokens import Scope
from tests.drill.report import Finding

SECRET = "organiser-chosen secret: zażółć 42"


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: by default one `default` event with a known secret."""
    events = overrides.pop("events", None) or {
        "default": EventConfig(slug="default", secrets=(SECRET,))
    }
    return Settings(data_dir=data_dir, database_url=database_url, events=events, **overrides)


class RunningService:
    """rollcall's ASGI app served by uvicorn on a real local socket, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # IPPROTO_TCP explicitly: asyncio turns on TCP_NODELAY only for such sockets, and
        # without it keep-alive requests stall ~40 ms (Nagle's algorithm and delayed ACKs).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            lifespan="on",
            log_config=None,
            access_log=False,  # as `rollcall serve` without --access-log
            timeout_keep_alive=settings.keep_alive,
            http=guarded(settings),
            limit_concurrency=settings.max_connections,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("rollcall did not start")
            time.sleep(0.02)

    @property
    def state(self) -> ServerState:
        """uvicorn's view of the connections open and the requests in progress."""
        return self._server.server_state

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()


def raw_exchange(url: str, wire: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send raw bytes on a new connection; what came back before the close, and when."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        received = b""
        with contextlib.suppress(ConnectionError):
            sock.sendall(wire)
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                received += chunk
    return received, time.monotonic() - started


def answers_then_idle(url: str, requests: list[bytes], pause: float) -> tuple[list[bytes], float]:
    """Send each request on one connection, `pause` s apart; the answers, and how long after
    the last one the server closed the connection, left idle (it must close it, unasked)."""
    host, port = url.removeprefix("http://").split(":")
    answers = []
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for n, request in enumerate(requests):
            if n:
                time.sleep(pause)
            sock.sendall(request)
            answers.append(_one_answer(sock))
        answered = time.monotonic()
        if sock.recv(1) != b"":
            raise AssertionError("the server sent more than its answers")
        return answers, time.monotonic() - answered


def _one_answer(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        received += _more(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    if length is None:
        raise AssertionError(f"an answer without a length: {head!r}")
    while len(body) < int(length.group(1)):
        body += _more(sock)
    return head + b"\r\n\r\n" + body


def _more(sock: socket.socket) -> bytes:
    # A close before the answer is whole fails here, instead of reading b"" forever.
    chunk = sock.recv(65536)
    if not chunk:
        raise AssertionError("the server closed the connection before its answer was whole")
    return chunk


def wait_until(condition: Callable[[], object], timeout: float = 10) -> None:
    """Wait for `condition` to hold; the timeout is only a liveness bound."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {condition}")
        time.sleep(0.01)


async def until(condition: Callable[[], Awaitable[object]], within: float = 30) -> None:
    """Await `condition` until it holds; `within` seconds is only a liveness bound."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {condition}")
        await asyncio.sleep(0.02)


async def until_true(condition: Callable[[], object], within: float = 30) -> None:
    """Wait on the event loop for a cheap `condition` to hold (a liveness bound only)."""

    async def check() -> object:
        return condition()

    await until(check, within)


def jte_headers(values: dict[str, str]) -> httpx.Headers:
    """JSON content type plus `values`, UTF-8 on the wire: chosen secrets may be non-ASCII."""
    headers = httpx.Headers(encoding="utf-8")
    headers["content-type"] = "application/json"
    for name, value in values.items():
        headers[name] = value
    return headers


def token_headers(secret: str = SECRET) -> httpx.Headers:
    return jte_headers({"x-webhook-secret": secret})


def bearer_headers(secret: str = SECRET) -> httpx.Headers:
    return jte_headers({"authorization": "Bearer " + secret})


def hmac_headers(body: bytes, secret: str = SECRET, *, prefix: str = "sha256=") -> httpx.Headers:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return jte_headers({"x-webhook-signature": prefix + digest})


def hmac_base64(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def delivery(
    event: str = "AttendeeRegistered",
    attendee_id: str = "a-1",
    delivery_id: str | None = None,
    **extra: Any,
) -> bytes:
    """A canonical JTE body, as DESIGN.md shows it."""
    body: dict[str, Any] = {"event": event}
    if delivery_id is not None:
        body["id"] = delivery_id
    body["attendee"] = {
        "id": attendee_id,
        "email": f"{attendee_id}@example.com",
        "firstName": "Ola",
    }
    body.update(extra)
    return json.dumps(body).encode()


def stored_rows(database_url: str) -> list[dict[str, Any]]:
    """Every stored delivery, read with plain SQL and the standard json module; a sealed body
    is decrypted with this process's keyring (its stored skeleton is under `skeleton`)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM rollcall.deliveries_events ORDER BY notification_id"
        ).fetchall()
        wrapped = {
            (slug, kind, subject): key
            for slug, kind, subject, key in conn.execute(
                "SELECT slug, kind, subject, wrapped FROM rollcall.data_keys"
            ).fetchall()
        }
    result = []
    for position, key, version, topic, state in rows:
        record = json.loads(bytes(state))
        record.update(position=position, key=key, version=version, topic=topic)
        record["body"] = base64.b64decode(record["body"])
        if record.get("sealed") is not None:
            record["skeleton"] = record["body"]
            subject = keys.subject_of(record["slug"], record["attendee_id"], key)
            if wrapped.get(subject) is not None:
                aead = keys.active().unwrap(subject, bytes(wrapped[subject]))
                opened = keys.unseal(aead, base64.b64decode(record["sealed"]), key)
                record["body"] = opened if opened is not None else record["body"]
        result.append(record)
    return result


def recorded(body: bytes, delivery_id: str | None = None) -> DeliveryRecorded:
    """A delivery record as intake would make it, for tests of the store and writers."""
    return DeliveryRecorded(
        originator_id=delivery_key("default", delivery_id, body, keys.active().dedupe_secret),
        originator_version=1,
        timestamp=datetime.now(UTC),
        slug="default",
        body=body,
        headers={"content-type": "application/json"},
        verified_by="token",
        delivery_id=delivery_id,
        event_type="AttendeeRegistered",
        attendee_id="a-1",
        occurred_at=None,
        parser_version=PARSER_VERSION,
        quarantine_reason=None,
    )


def api_token(database_url: str, scope: Scope = "read") -> str:
    """A fresh API token of `scope` for the analyst API."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return tokens.issue(conn, scope, f"test-{scope}")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@contextmanager
def drill_directory() -> Iterator[Path]:
    """A drill's workspace directory: not under tmp_path, whose parent every new pytest session
    (a concurrent one too) makes private again, leaving the embedded PostgreSQL's own system
    user unable to reach its data directory."""
    path = Path(tempfile.mkdtemp(prefix="rollcall-drill-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def held(finding: Finding) -> Finding:
    """`finding`, once asserted to have held with nothing lost or duplicated."""
    assert finding.held, finding.broken
    assert finding.lost == 0 and finding.duplicated == 0
    return finding


def figure(finding: Finding, pattern: str) -> float:
    """The number `pattern`'s first group finds in the finding's figures (commas allowed)."""
    found = re.search(pattern, finding.figures)
    assert found, finding.figures
    return float(found.group(1).replace(",", ""))


def as_role(database_url: str, user: str, password: str | None = None) -> str:
    """The same database, connecting as `user`."""
    params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(database_url)
    params.update(user=user, password=password or "")
    return psycopg.conninfo.make_conninfo(**params)


def drop_roles(server_url: str, database_urls: list[str], roles: list[str]) -> None:
    """Drop the databases, then the roles a test made (roles are server-wide: never leave one)."""
    for url in database_urls:
        database.drop_database(server_url, url)
    with psycopg.connect(server_url, autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def analyst_groups(server_url: str, login: str) -> list[str]:
    """The groups `login` is a member of (but the old shared one, which other tests use)."""
    with psycopg.connect(server_url) as conn:
        rows = conn.execute(
            "SELECT g.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
            "JOIN pg_roles m ON m.oid = a.member WHERE m.rolname = %s AND g.rolname <> %s",
            (login, "rollcall_analyst"),
        ).fetchall()
    return [row[0] for row in rows]
