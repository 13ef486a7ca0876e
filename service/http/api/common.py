"""What every analyst route shares: its token check, its parameters, its event, and how a
failure is answered (JSON, never a 500: 400 for a bad or unknown parameter, 401/403 for tokens,
404 for an unknown event, 503 when the database or the export budget cannot answer now)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain.interpret import parse_time
from service.config import EventConfig, EventsWatcher
from service.config import zone as config_zone
from service.http.exports import Exports, ExportsBusy, Table
from service.http.responses import Error, json_response
from service.tokens import Grant, Scope, TokenCache, allows

log = logging.getLogger("rollcall.api")

MAX_LIMIT: Final = 1000
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)  # the latest `at`, `from`, `to` or bucket end
_encoder: Final = msgspec.json.Encoder()

Handler = Callable[[Request], Awaitable[Response]]
EventHandler = Callable[[Request, str], Awaitable[Response]]


class ApiError(Exception):
    """An answer other than 2xx, with its JSON body."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class Unavailable(Exception):
    """The database could not answer."""


class Api:
    """Makes the /v1 routes: each checks its token and its parameters (PARAMETERS in
    service/http/api/__init__.py), and an event route its event, before its handler runs."""

    def __init__(self, events: EventsWatcher, parameters: dict[str, tuple[str, ...]]) -> None:
        self.events = events
        self._parameters = parameters
        self._tokens = TokenCache()

    def route(
        self, path: str, endpoint: Handler, scope: Scope = "read", method: str = "GET"
    ) -> Route:
        return Route(path, self._guarded(endpoint, path, scope, method), methods=[method])

    def event_route(self, path: str, endpoint: EventHandler) -> Route:
        """A read route about one configured JTE event (path parameter `event`)."""

        async def with_event(request: Request) -> Response:
            slug: str = request.path_params["event"]
            self.check_event(request, slug)
            request.state.event = self.events.event(slug)  # its time zone, for `zone()`
            return await endpoint(request, slug)

        return self.route(path, with_event)

    def check_event(self, request: Request, slug: str) -> None:
        """404 for an event that is not configured, or not one the token may see (the same
        answer: a token limited to some events learns nothing of the others)."""
        if self.events.event(slug) is None or not grant(request).sees(slug):
            raise ApiError(404, "unknown_event", f"no JTE event {slug[:64]!r} is configured")

    def _guarded(self, endpoint: Handler, path: str, scope: Scope, method: str) -> Handler:
        # A path's parameters, unless its other method has its own ("DELETE /path").
        known = self._parameters.get(f"{method} {path}", self._parameters.get(path, ()))

        async def handle(request: Request) -> Response:
            try:
                await authorize(request, scope, self._tokens)
                known_only(request, known)
                return await endpoint(request)
            except ApiError as error:
                return error_response(error)
            except ExportsBusy as busy:
                return _unavailable("too_many_exports", str(busy))
            except (
                OSError,
                TimeoutError,  # a query over its time: the database is too busy to answer now
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                # A pooled connection the server terminated can fail its next query this way
                # (found by tests/test_promises.py: it was a 500 while the database was down).
                asyncpg.InternalClientError,
                Unavailable,
            ):
                return _unavailable("unavailable", "the database is unavailable; retry")
            except asyncpg.DataError as error:
                # A stored row PostgreSQL cannot read back (written before the rule that now
                # prevents it, projections/columns.py): never a 500; a rebuild rewrites it.
                log.error("a view row could not be read: %s: %s", type(error).__name__, error)
                body = Error(
                    error="unreadable",
                    message="a stored view row cannot be read; an operator can rebuild the view",
                )
                return json_response(body, status_code=503)
            except asyncpg.PostgresError as error:  # e.g. views not set up yet: not a 500
                log.warning("the database refused a read: %s", type(error).__name__)
                return _unavailable("unavailable", "the database cannot answer now; retry")

        return handle


async def authorize(request: Request, needed: Scope, tokens: TokenCache) -> None:
    """401 without a valid bearer token, 403 when its scope is not enough."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "an API token is needed: Authorization: Bearer <token>")
    granted = await tokens.scope(pool(request), token.strip())
    if granted is None:
        raise ApiError(401, "unauthorized", "the API token is not valid")
    if not allows(granted.scope, needed):
        raise ApiError(403, "forbidden", f"this needs a token with the {needed} scope")
    request.state.grant = granted


def grant(request: Request) -> Grant:
    """What the request's token grants (set by authorize)."""
    granted: Grant = request.state.grant
    return granted


def error_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    body = Error(error=error.error, message=error.message)
    return json_response(body, status_code=error.status, headers=headers)


def _unavailable(error: str, message: str) -> Response:
    body = Error(error=error, message=message)
    return json_response(body, status_code=503, headers={"Retry-After": "5"})


def pool(request: Request) -> asyncpg.Pool:
    """The interactive reads' connections."""
    interactive: asyncpg.Pool = request.app.state.pool
    return interactive


def exports(request: Request) -> Exports:
    """The CSV exports' connections and budget."""
    budget: Exports = request.app.state.exports
    return budget


# --- Parameters --------------------------------------------------------------------------------


def known_only(request: Request, known: tuple[str, ...]) -> None:
    """400 for a query parameter the route does not know, or one given more than once."""
    names = [name for name, _ in request.query_params.multi_items()]
    unknown = list(dict.fromkeys(name for name in names if name not in known))
    if unknown:
        listed = ", ".join(f"`{name[:40]}`" for name in unknown[:5])
        takes = f"it takes {', '.join(known)}" if known else "it takes no parameters"
        raise ApiError(400, "bad_parameter", f"unknown parameter {listed}: {takes}")
    for name in known:
        if (count := names.count(name)) > 1:
            raise ApiError(400, "bad_parameter", f"`{name}` given {count} times: give it once")


def table(request: Request, xlsx: bool = False) -> Table:
    """How to answer a list or summary: `format=json|csv` (and `xlsx` where `xlsx`), else CSV
    when the Accept header asks for text/csv; `dialect=csv|excel` for CSV only."""
    params = request.query_params
    kinds = ("json", "csv", "xlsx") if xlsx else ("json", "csv")
    fmt = params.get("format")
    if fmt is not None and fmt not in kinds:
        raise ApiError(400, "bad_parameter", f"`format` must be {' or '.join(kinds)}")
    if fmt is None:
        fmt = "csv" if "text/csv" in request.headers.get("accept", "") else "json"
    dialect = params.get("dialect")
    if dialect is not None:
        if dialect not in ("csv", "excel"):
            raise ApiError(400, "bad_parameter", "`dialect` must be csv or excel")
        if fmt != "csv":
            raise ApiError(400, "bad_parameter", "`dialect` applies to format=csv only")
    return Table(fmt, dialect or "csv")  # type: ignore[arg-type]


def limit(params: Any, default: int = 50, maximum: int = MAX_LIMIT) -> int:
    text = params.get("limit")
    if text is None:
        return default
    # isascii(): str.isdigit() also accepts digits like "²" that int() refuses.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= maximum:
        raise ApiError(400, "bad_parameter", f"`limit` must be a whole number from 1 to {maximum}")
    return int(text)


def flag(params: Any, name: str) -> bool | None:
    text = params.get(name)
    if text is None:
        return None
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ApiError(400, "bad_parameter", f"`{name}` must be true or false")


def choice(params: Any, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    text = params.get(name)
    if text is None:
        return default
    if text not in allowed:
        raise ApiError(400, "bad_parameter", f"`{name}` must be one of {', '.join(allowed)}")
    return str(text)


def text(params: Any, name: str) -> str | None:
    """A free-text parameter: 1 to 200 characters, no NUL."""
    value = params.get(name)
    if value is not None and (not value or len(value) > 200 or "\x00" in value):
        raise ApiError(400, "bad_parameter", f"`{name}` must be 1 to 200 characters")
    return value


def time(params: Any, name: str) -> datetime | None:
    value = params.get(name)
    if value is None:
        return None
    number = value.strip().lstrip("-")
    is_number = number.isascii() and number.isdigit() and len(number) <= 18
    when = parse_time(int(value)) if is_number else parse_time(value)
    if when is None or not datetime(1970, 1, 1, tzinfo=UTC) <= when <= LATEST:
        raise ApiError(400, "bad_parameter", f"`{name}` must be an ISO 8601 time")
    return when


def zone(request: Request) -> ZoneInfo:
    """The time zone days and hours are cut in: `tz=`, else the event's configured one."""
    name = request.query_params.get("tz")
    if name is None:
        configured: EventConfig = request.state.event
        name = configured.timezone
    found = config_zone(name)
    if found is None:
        raise ApiError(
            400, "bad_parameter", "`tz` must be an IANA time zone such as Europe/Warsaw or UTC"
        )
    return found


def local_time(params: Any, name: str, tz: ZoneInfo) -> datetime | None:
    """A time parameter where a date (`2026-03-29`) means that day's local midnight in `tz`,
    and a time without an offset is local time in `tz`."""
    value = params.get(name)
    if value is None:
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return time(params, name)  # a Unix time, or a 400
    if parsed.tzinfo is None:
        try:
            # A wall time in a DST gap or fold resolves as zoneinfo does (fold=0: the earlier).
            parsed = parsed.replace(tzinfo=tz).astimezone(UTC)
        except (OverflowError, ValueError):
            raise ApiError(400, "bad_parameter", f"`{name}` must be an ISO 8601 time") from None
        if not datetime(1970, 1, 1, tzinfo=UTC) <= parsed <= LATEST:
            raise ApiError(400, "bad_parameter", f"`{name}` must be an ISO 8601 time")
        return parsed
    return time(params, name)


def encode_cursor(values: list[Any]) -> str:
    """An opaque cursor for the next page."""
    return base64.urlsafe_b64encode(_encoder.encode(values)).decode().rstrip("=")


def decode_cursor(params: Any, size: int) -> list[str] | None:
    """The `cursor` parameter's values; 400 unless it is one this API gave out."""
    value = params.get("cursor")
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        values = msgspec.json.decode(raw, type=list[str])
    except (ValueError, msgspec.DecodeError):
        raise bad_cursor() from None
    # A NUL cannot reach PostgreSQL's text: no cursor this API gave out has one.
    if len(values) != size or any("\x00" in v for v in values):
        raise bad_cursor()
    return values


def bad_cursor() -> ApiError:
    return ApiError(400, "bad_parameter", "`cursor` is not one this API gave out")
