"""Fixtures: a real PostgreSQL (DATABASE_URL's server, else an embedded one), a fresh database per
test, and the real rollcall HTTP server on a local socket."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from psycopg import sql

from service.database import EmbeddedPostgres, with_database
from tests.helpers import RunningService, make_settings

# Generation speed varies with machine load (CI shares two cores with PostgreSQL); what the
# properties check does not depend on it.
settings.register_profile("rollcall", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("rollcall")


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL on the test server: DATABASE_URL's, or an embedded one for the session."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    data_dir = Path(tempfile.mkdtemp(prefix="rollcall-test-"))
    embedded = EmbeddedPostgres(data_dir)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def new_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Make new, empty databases for one test; all are dropped afterwards."""
    names: list[str] = []

    def create() -> str:
        name = f"rollcall_test_{uuid4().hex[:12]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        names.append(name)
        return with_database(server_url, name)

    yield create
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in names:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def database_url(new_database: Callable[[], str]) -> str:
    """A new, empty database for one test, dropped afterwards."""
    return new_database()


@pytest.fixture
def start_service(database_url: str, tmp_path: Path) -> Iterator[Callable[..., RunningService]]:
    """Start rollcall's real HTTP server in this process; every started one is stopped after."""
    started: list[RunningService] = []

    def start(**overrides: object) -> RunningService:
        settings = make_settings(database_url, tmp_path, **overrides)
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
