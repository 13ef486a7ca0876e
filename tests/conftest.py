"""Fixtures: a real PostgreSQL (DATABASE_URL's server, else an embedded one), a fresh database per
test, and the real rollcall HTTP server on a local socket."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from service.eventstore import database, keys
from service.jte import simulator
from tests.helpers import SECRET, RunningService, make_settings

pytest_plugins = ["pytester"]  # checks of the checkers run a tiny suite of their own

# Generation speed varies with machine load (CI shares two cores with PostgreSQL); what the
# properties check does not depend on it.
settings.register_profile("rollcall", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("rollcall")
# One master key for every store, source and service a test runs in this process (and the CLI
# processes it starts): personal data is sealed under it (service/eventstore/keys.py).
os.environ.setdefault(keys.MASTER_KEY_ENV, keys.generate_master_key())


# --- No secret, token or personal value in any log line of an in-process server -----------

# The loggers of the code that serves (the test's own HTTP client logs are not the service's).
SERVICE_LOGGERS: tuple[str, ...] = (
    "rollcall",
    "uvicorn.error",
    "starlette",
    "asyncpg",
    "psycopg",
    "eventsourcing",
)
# Personal values the tests and the simulator put in deliveries: the seeded names, and every
# surname the simulator gives (first names are too short to tell from ordinary words).
PERSONAL: tuple[str, ...] = (
    "Anna",
    "Kowalski",
    "Wiśniewska",
    "Zając",
    *{name for pair in simulator._PL_SURNAMES for name in pair},
)
LEAKS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\brc_[A-Za-z0-9_-]{16,}"),  # an API token
    re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"),  # a Standard Webhooks secret
    re.compile(r"[\w.+-]+@[A-Za-z0-9-]+\.[A-Za-z]{2,}"),  # an email address
    re.compile(r"\b(?:" + "|".join(map(re.escape, PERSONAL)) + r")\b"),
)


class LogCapture(logging.Handler):
    """Every record the service's loggers emit, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(SERVICE_LOGGERS)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def leaks(lines: list[str], secrets: set[str]) -> list[str]:
    """The lines holding one of `secrets`, a token, an email or a personal name."""
    return [
        line
        for line in lines
        if any(secret in line for secret in secrets if secret)
        or any(pattern.search(line) for pattern in LEAKS)
    ]


@pytest.fixture
def log_secrets() -> set[str]:
    """Values a test used that must never be logged; tests and fixtures add theirs."""
    return {SECRET}


@pytest.fixture(autouse=True)
def service_logs(log_secrets: set[str]) -> Iterator[LogCapture]:
    """Capture every record of in-process servers at DEBUG, and fail the test if any line
    holds a secret, token or personal value it used."""
    capture = LogCapture()
    logger = logging.getLogger("rollcall")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(capture)
    try:
        yield capture
    finally:
        logging.getLogger().removeHandler(capture)
        logger.setLevel(level)
    leaked = leaks(capture.lines, log_secrets)
    assert not leaked, f"{len(leaked)} log lines hold secret or personal data: {leaked[:3]}"


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL on the test server: DATABASE_URL's, or an embedded one for the session."""
    data_dir = Path(tempfile.mkdtemp(prefix="rollcall-test-"))
    try:
        with database.server(os.environ.get("DATABASE_URL") or None, data_dir) as url:
            yield url
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def new_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Make new, empty databases for one test; all are dropped afterwards."""
    urls: list[str] = []

    def create() -> str:
        urls.append(database.new_database(server_url, "rollcall_test"))
        return urls[-1]

    yield create
    for url in urls:
        database.drop_database(server_url, url)


@pytest.fixture
def database_url(new_database: Callable[[], str]) -> str:
    """A new, empty database for one test, dropped afterwards."""
    return new_database()


@pytest.fixture
def settings_defaults() -> dict[str, object]:
    """Settings every service a test module starts has, unless the test says otherwise."""
    return {}


@pytest.fixture
def start_service(
    database_url: str,
    tmp_path: Path,
    settings_defaults: dict[str, object],
    log_secrets: set[str],
) -> Iterator[Callable[..., RunningService]]:
    """Start rollcall's real HTTP server in this process; every started one is stopped after."""
    started: list[RunningService] = []

    def start(**overrides: object) -> RunningService:
        settings = make_settings(database_url, tmp_path, **{**settings_defaults, **overrides})
        for event in settings.events.values():
            log_secrets.update(event.secrets)
        service = RunningService(settings)
        service.start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()


@pytest.fixture
async def service(start_service: Callable[..., RunningService]) -> AsyncIterator[RunningService]:
    """rollcall with the quick-start configuration: one `default` event, token-or-HMAC."""
    yield start_service()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A small asyncpg pool on the test database, as the analyst API reads it."""
    connections = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield connections
    finally:
        await connections.close()
