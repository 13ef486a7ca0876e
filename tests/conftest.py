"""Fixtures: a real PostgreSQL (DATABASE_URL's server, else an embedded one), a fresh database per
test, and the real rollcall HTTP server on a local socket."""

from __future__ import annotations

import os
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
    embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="rollcall-test-")))
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    name = f"rollcall_test_{uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


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
