"""The Starlette application: its routes and the lifespan that opens the store and the pools."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.config import ConfigError, Settings, ensure_secrets, load_settings
from service.database import redacted
from service.http import json_response
from service.intake import Intake
from service.store import SCHEMA, EventStore, StoreUnavailable
from service.writer import DirectWriter

log = logging.getLogger("rollcall.app")

STARTUP_TIMEOUT = 30.0


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the service; settings default to the environment (as `rollcall serve` sets it)."""
    settings = ensure_secrets(settings or load_settings())
    database_url = settings.database_url
    if database_url is None:
        raise ConfigError("no database: set DATABASE_URL, or start with `rollcall serve`")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await _open_store(database_url, settings)
        writer = DirectWriter(
            store,
            threads=settings.store_threads,
            queue_max=settings.queue_max,
            timeout=settings.store_timeout,
        )
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, command_timeout=5)
        app.state.store = store
        app.state.pool = pool
        app.state.intake = Intake(settings, writer)
        log.info(
            "rollcall ready on %s (events: %s)", redacted(database_url), ", ".join(settings.events)
        )
        try:
            yield
        finally:
            await writer.close()
            await pool.close()
            await asyncio.to_thread(store.close)

    routes = [
        Route("/webhooks/jte", _webhook, methods=["POST"]),
        Route("/webhooks/jte/{event}", _webhook, methods=["POST"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
    )


async def _open_store(database_url: str, settings: Settings) -> EventStore:
    """Open the event store, waiting a while for a database that is still starting."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            return await asyncio.to_thread(
                EventStore,
                database_url,
                pool_size=settings.store_threads,
                timeout=settings.store_timeout,
            )
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            log.warning("database %s not reachable yet; retrying", redacted(database_url))
            await asyncio.sleep(1)


async def _webhook(request: Request) -> Response:
    intake: Intake = request.app.state.intake
    return await intake(request)


async def _healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def _readyz(request: Request) -> Response:
    pool: asyncpg.Pool = request.app.state.pool
    try:
        async with asyncio.timeout(2):
            ready = await pool.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{SCHEMA}.deliveries_events"
            )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        return json_response(
            {"status": "unavailable", "database": f"unreachable ({type(error).__name__})"},
            status_code=503,
        )
    if not ready:
        return json_response(
            {"status": "unavailable", "database": "schema missing"}, status_code=503
        )
    return json_response({"status": "ready", "database": "ok"})


async def _http_error(request: Request, error: HTTPException) -> Response:
    body: dict[str, Any] = {
        "error": _ERROR_NAMES.get(error.status_code, "error"),
        "message": error.detail,
    }
    return json_response(body, status_code=error.status_code, headers=error.headers)


_ERROR_NAMES = {404: "not_found", 405: "method_not_allowed"}
