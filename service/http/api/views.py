"""GET /v1/projections (where each view stands) and POST /v1/projections/{name}/rebuild."""

from __future__ import annotations

import asyncio
import logging
import threading

import psycopg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections.fold import PoisonError
from projections.rebuild import BuildBusy, rebuild
from projections.registry import VIEW_NAMES
from projections.status import ViewStatus, read_status
from service.eventstore.source import SOURCE
from service.http.api import common
from service.http.api.common import Api, ApiError, Unavailable
from service.http.api.models import Projections, RebuildStarted
from service.http.responses import json_response

log = logging.getLogger("rollcall.api")


def routes(api: Api) -> list[Route]:
    rebuilds = _Rebuilds()
    return [
        api.route("/v1/projections", status),
        api.route("/v1/projections/{name}/rebuild", rebuilds.start, "admin", "POST"),
    ]


async def status(request: Request) -> Response:
    url: str = request.app.state.database_url
    try:
        statuses = await asyncio.to_thread(_read_status, url)
    except psycopg.Error as error:
        raise Unavailable from error
    return json_response(Projections(statuses))


class _Rebuilds:
    """Rebuilds started over HTTP: one at a time per process, each in a thread of its own."""

    def __init__(self) -> None:
        self._running: threading.Thread | None = None

    async def start(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in (*VIEW_NAMES, "all"):
            raise ApiError(404, "unknown_view", f"views are {', '.join(VIEW_NAMES)} or all")
        if common.grant(request).events is not None:
            # A rebuild rewrites every event's rows: not for a token limited to some.
            raise ApiError(403, "forbidden", "a rebuild needs an admin token for all events")
        views = list(VIEW_NAMES) if name == "all" else [name]
        skip_poison = common.flag(request.query_params, "skip_poison") or False
        if self._running is not None and self._running.is_alive():
            raise ApiError(409, "busy", "a rebuild started here is still running")
        self._running = threading.Thread(
            target=_rebuild_in_background,
            args=(request.app.state.database_url, views, skip_poison),
            daemon=True,
        )
        self._running.start()
        return json_response(RebuildStarted(status="rebuilding", views=views), status_code=202)


def _read_status(database_url: str) -> list[ViewStatus]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        return read_status(conn, SOURCE)


def _rebuild_in_background(database_url: str, views: list[str], skip_poison: bool) -> None:
    """A rebuild asked for over HTTP; its progress (or what stopped it) shows in
    GET /v1/projections."""
    try:
        built = rebuild(database_url, views, SOURCE, skip_poison=skip_poison)
    except (BuildBusy, PoisonError) as error:
        log.warning("rebuild of %s did not run: %s", ", ".join(views), error)
    except Exception:
        log.exception("rebuild of %s failed", ", ".join(views))
    else:
        log.info("rebuilt and swapped in: %s", ", ".join(f"{v.view} v{v.version}" for v in built))
