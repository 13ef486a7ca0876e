"""Fixtures: a real PostgreSQL (DATABASE_URL's server, else an embedded one), a fresh database per
test, and the real rollcall HTTP server on a local socket."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from service.eventstore import database, keys
from tests.helpers import RunningService, make_settings

# Generation speed varies with machine load (CI shares two cores with PostgreSQL); what the
# properties check does not depend on it.
settings.register_profile("rollcall", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("rollcall")
# One master key for every store, source and service a test runs in this process (and the CLI
# processes it starts): personal data is sealed under it (service/eventstore/keys.py).
os.environ.setdefault(keys.MASTER_KEY_ENV, keys.generate_master_key())


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
    database_url: str, tmp_path: Path, settings_defaults: dict[str, object]
) -> Iterator[Callable[..., RunningService]]:
    """Start rollcall's real HTTP server in this process; every started one is stopped after."""
    started: list[RunningService] = []

    def start(**overrides: object) -> RunningService:
        settings = make_settings(database_url, tmp_path, **{**settings_defaults, **overrides})
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
