"""The ASGI application: webhook intake, the other routes, and the lifespan that opens the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Final

import asyncpg
import msgspec
import psycopg
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from projections import payments
from projections.runner import Runner
from service import intake_log, privacy
from service.config import (
    ConfigError,
    EventConfig,
    EventsWatcher,
    Settings,
    ensure_secrets,
    load_settings,
)
from service.eventstore import keys
from service.eventstore.database import redacted
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore, StoreUnavailable
from service.eventstore.writer import DirectWriter, GroupCommitWriter
from service.http import api, dashboard, openapi, probes
from service.http.exports import Exports
from service.http.intake import Intake, is_webhook_path
from service.http.logs import RequestIdMiddleware
from service.http.responses import Error, json_response
from service.metrics import HTTP_SECONDS, METRICS, worker_exited
from service.runner_process import RunnerProcess

log = logging.getLogger("rollcall.app")

STARTUP_TIMEOUT = 30.0
QUERY_TIMEOUT: Final = 5.0  # seconds an interactive read may take before answering 503
# How often events past their retention period are looked for (service/privacy.py).
RETENTION_INTERVAL: Final = 3600.0


class Rollcall:
    """The ASGI entry point: deliveries go straight to intake, everything else to Starlette."""

    def __init__(self, intake: Intake, routes: Starlette) -> None:
        self.intake = intake
        self.routes = routes
        self._with_request_id = RequestIdMiddleware(self._dispatch)

    @property
    def state(self) -> State:
        return self.routes.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._with_request_id(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.routes(scope, receive, send)
        elif is_webhook_path(scope["path"]):
            await self.intake(scope, receive, send)
        else:
            await _timed(self.routes, scope, receive, send)


async def _timed(app: Starlette, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer, and observe how long it took by route template (never the raw path: bounded)."""
    status = 500

    async def sending(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    started = time.perf_counter()
    try:
        await app(scope, receive, sending)
    finally:
        route = scope.get("route")
        template = route.path if isinstance(route, Route) else "unmatched"
        HTTP_SECONDS.labels(template, scope["method"], str(status)).observe(
            time.perf_counter() - started
        )


def create_app(settings: Settings | None = None) -> Rollcall:
    """Build the service; settings default to the environment (as `rollcall serve` sets it)."""
    settings = ensure_secrets(settings or load_settings())
    database_url = settings.database_url
    if database_url is None:
        raise ConfigError("no database: set DATABASE_URL, or start with `rollcall serve`")
    # Personal data is sealed and opened with this master key (service/eventstore/keys.py).
    keys.activate(keys.keyring_for(settings.data_dir, settings.master_key))
    # Secrets can be rotated by editing ROLLCALL_CONFIG: intake re-reads it when it changes.
    events = EventsWatcher(settings)
    intake = Intake(settings, events)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await _open_store(database_url, settings)
        writer = _make_writer(store, settings)
        pool = await asyncpg.create_pool(
            database_url, min_size=1, max_size=4, command_timeout=QUERY_TIMEOUT
        )
        # Exports have connections of their own: slow or many never hold up interactive reads.
        export_pool = await asyncpg.create_pool(
            database_url,
            min_size=0,
            max_size=settings.export_connections,
            command_timeout=QUERY_TIMEOUT,  # the COPY itself has the export deadline instead
        )
        app.state.store = store
        app.state.writer = writer
        app.state.pool = pool
        app.state.exports = Exports(
            export_pool,
            slots=settings.export_connections,
            deadline=settings.export_timeout,
            stall=settings.export_stall,
        )
        app.state.database_url = database_url
        app.state.events = events
        intake.writer = writer
        runner = _start_runner(database_url, settings)
        app.state.runner = runner
        retain = privacy.retained(settings.events)
        sweeper = (
            asyncio.create_task(_sweep_forever(store, database_url, retain)) if retain else None
        )
        await asyncio.to_thread(_ensure_intake_log, database_url)
        intake.log.start(pool)
        # payment_totals cuts days in each event's zone: recorded now and on every reload.
        loop = asyncio.get_running_loop()
        zone_tasks: set[asyncio.Task[None]] = set()

        def record_zones(configured: Mapping[str, EventConfig]) -> None:
            task = loop.create_task(_record_zones(pool, configured))
            zone_tasks.add(task)
            task.add_done_callback(zone_tasks.discard)

        await _record_zones(pool, settings.events)

        def reloaded(configured: Mapping[str, EventConfig]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: we are stopping
                loop.call_soon_threadsafe(record_zones, configured)

        events.on_reload(reloaded)
        METRICS.watch_queue(lambda: writer.depth)
        sampler = asyncio.get_running_loop().create_task(_sample_metrics())
        log.info(
            "rollcall ready on %s (events: %s)", redacted(database_url), ", ".join(settings.events)
        )
        try:
            yield
        finally:
            sampler.cancel()
            METRICS.watch_queue(None)
            METRICS.flush()
            worker_exited()
            intake.writer = None
            if sweeper is not None:
                sweeper.cancel()
            await intake.log.stop()
            if runner is not None:
                await asyncio.to_thread(runner.stop)
            await writer.close()
            await pool.close()
            export_pool.terminate()  # an export still running is cut off, not waited for
            await asyncio.to_thread(store.close)

    routes = [
        Route("/healthz", probes.healthz, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
        Route("/metrics", probes.metrics, methods=["GET"]),
        *api.routes(events),
        *dashboard.routes(),
    ]
    starlette = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
    )
    # A path with a trailing slash is no route of ours: 404, not an undocumented 307.
    starlette.router.redirect_slashes = False
    return Rollcall(intake, starlette)


async def _sweep_forever(store: DeliveryStore, database_url: str, retain: dict[str, int]) -> None:
    """Erase the personal data of events past their retention period, now and every hour."""
    while True:
        try:
            erased = await asyncio.to_thread(
                privacy.sweep, store, database_url, retain, datetime.now(UTC)
            )
        except Exception:
            log.exception("the retention sweep failed; it runs again in an hour")
        else:
            if erased:
                log.info("retention: erased %d attendees' personal data", erased)
        await asyncio.sleep(RETENTION_INTERVAL)


def _ensure_intake_log(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        intake_log.ensure_table(conn)


async def _record_zones(pool: asyncpg.Pool, configured: Mapping[str, EventConfig]) -> None:
    """Record the events' time zones for the analytics views; a failure is logged, not fatal
    (their days stay as last recorded)."""
    zones = {slug: event.timezone for slug, event in configured.items()}
    for attempt in (1, 2):  # a runner creating the table at the same moment may collide once
        try:
            unknown = await payments.record_zones(pool, zones)
        except (asyncpg.PostgresError, OSError) as error:
            if attempt == 2:
                log.warning("event time zones not recorded: %s", type(error).__name__)
            continue
        if unknown:
            log.warning("PostgreSQL does not know the time zones %s: their days stay UTC", unknown)
        return


async def _sample_metrics() -> None:
    """Write the sampled gauges each second (every worker: a scrape reads them all)."""
    while True:
        await asyncio.sleep(1.0)
        METRICS.flush()


async def _open_store(database_url: str, settings: Settings) -> DeliveryStore:
    """Open the event store, waiting a while for a database that is still starting."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            return await asyncio.to_thread(
                DeliveryStore,
                database_url,
                pool_size=max(settings.store_threads, settings.batch_writers),
                timeout=settings.store_timeout,
            )
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            log.warning("database %s not reachable yet; retrying", redacted(database_url))
            await asyncio.sleep(1)


def _start_runner(database_url: str, settings: Settings) -> RunnerProcess | _RunnerThread | None:
    """The live views' runner as the settings ask: a child process, a thread, or none."""
    if not settings.projections:
        return None
    if settings.projection_runner == "thread":
        return _RunnerThread(database_url)
    return RunnerProcess(database_url, log_format=settings.log_format)


class _RunnerThread:
    """The projection runner in a background thread of this process."""

    def __init__(self, database_url: str) -> None:
        self.runner = Runner(database_url, SOURCE)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.runner.run, args=(self._stop,), name="projections", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _make_writer(store: DeliveryStore, settings: Settings) -> DirectWriter | GroupCommitWriter:
    if not settings.group_commit:
        return DirectWriter(
            store,
            threads=settings.store_threads,
            queue_max=settings.queue_max,
            timeout=settings.store_timeout,
        )
    writer = GroupCommitWriter(
        store,
        batch_max=settings.batch_max,
        linger=settings.batch_linger_ms / 1000,
        queue_max=settings.queue_max,
        timeout=settings.store_timeout,
        writers=settings.batch_writers,
    )
    writer.start()
    return writer


_OPENAPI: Final = msgspec.json.encode(openapi.document())


async def _openapi(request: Request) -> Response:
    return Response(_OPENAPI, media_type="application/json")


async def _http_error(request: Request, error: HTTPException) -> Response:
    body = Error(_ERROR_NAMES.get(error.status_code, "error"), error.detail)
    return json_response(body, status_code=error.status_code, headers=error.headers)


_ERROR_NAMES = {404: "not_found", 405: "method_not_allowed"}
