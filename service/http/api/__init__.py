"""The analyst API, v1: roster, one attendee, occupancy and its timeline, check-ins, payments.

Everything is read from the `analytics` schema (and the store, for an attendee's deliveries)
with asyncpg. Lists page by an opaque keyset cursor; roster, payments and the timeline also
answer as CSV (`format=csv` or `Accept: text/csv`; service/exports.py). Every error is JSON
with a clear message: 400 for a bad or unknown parameter, 401/403 for tokens, 404 for an
unknown event, 503 when the database (or the export budget) cannot answer now; never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec
import psycopg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain.interpret import Interpreted, interpret, parse_time
from projections.fold import PoisonError
from projections.rebuild import BuildBusy, rebuild
from projections.registry import VIEW_NAMES
from projections.roster import SEARCH_TEXT
from projections.status import ViewStatus, read_status
from service.config import EventsWatcher
from service.eventstore.source import SOURCE
from service.http.api import models as m
from service.http.exports import Exports, ExportsBusy, csv_rows
from service.http.responses import Error, json_response
from service.http.tokens import Scope, TokenCache, allows

log = logging.getLogger("rollcall.api")

MAX_LIMIT: Final = 1000
MAX_BUCKETS: Final = 10_000
_LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)  # the latest `at`, `from`, `to` or bucket end
BUCKETS: Final = {
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
}
STATUSES: Final = ("registered", "deleted", "unregistered", "all")
_encoder: Final = msgspec.json.Encoder()

# The roster's reading order, which the roster index follows (projections/roster.py).
ORDER_KEY: Final = "coalesce(lower(last_name), ''), coalesce(lower(first_name), ''), attendee_id"
_ATTENDEE_COLUMNS: Final = (
    "attendee_id, status, email, first_name, last_name, role, company, ticket, added_by_admin, "
    "checked_in, paid, amount, currency, payment_method, paid_at, registered_at, first_seen_at, "
    "deleted_at, last_check_in_at, last_check_out_at, fields::text AS fields"
)


class _Unavailable(Exception):
    """The database could not answer."""


class ApiError(Exception):
    """An answer other than 2xx, with its JSON body."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


Handler = Callable[[Request], Awaitable[Response]]


# The query parameters each route knows (OpenAPI documents exactly these); any other, or one
# given twice, is a 400 naming them: a question the API does not understand gets no answer.
PARAMETERS: Final[dict[str, tuple[str, ...]]] = {
    "/v1/events/{event}/roster": (
        "status", "role", "checked_in", "paid", "q", "limit", "cursor", "format",
    ),
    "/v1/events/{event}/occupancy": ("at",),
    "/v1/events/{event}/occupancy/timeline": ("bucket", "from", "to", "format"),
    "/v1/events/{event}/check-ins": ("limit",),
    "/v1/events/{event}/payments": ("currency", "method", "limit", "cursor", "format"),
    "/v1/projections/{name}/rebuild": ("skip_poison",),
}  # fmt: skip


def routes(events: EventsWatcher) -> list[Route]:
    """The /v1 analyst routes (each checks its token, its parameters and its event)."""
    api = _Api(events)

    def route(path: str, endpoint: Handler, scope: Scope = "read", method: str = "GET") -> Route:
        known = PARAMETERS.get(path, ())
        return Route(path, api.handler(endpoint, known, scope), methods=[method])

    return [
        route("/v1/events", api.events),
        route("/v1/events/{event}/roster", api.roster),
        route("/v1/events/{event}/attendees/{attendee_id}", api.attendee),
        route("/v1/events/{event}/occupancy", api.occupancy),
        route("/v1/events/{event}/occupancy/timeline", api.timeline),
        route("/v1/events/{event}/check-ins", api.check_ins),
        route("/v1/events/{event}/payments", api.payments),
        route("/v1/events/{event}/payments/summary", api.payment_summary),
        route("/v1/projections", api.projections),
        route("/v1/projections/{name}/rebuild", api.rebuild, "admin", "POST"),
    ]


async def authorize(request: Request, needed: Scope, tokens: TokenCache) -> None:
    """401 without a valid bearer token, 403 when its scope is not enough."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "an API token is needed: Authorization: Bearer <token>")
    granted = await tokens.scope(request.app.state.pool, token.strip())
    if granted is None:
        raise ApiError(401, "unauthorized", "the API token is not valid")
    if not allows(granted, needed):
        raise ApiError(403, "forbidden", f"this needs a token with the {needed} scope")


def _unavailable(error: str, message: str) -> Response:
    body = Error(error=error, message=message)
    return json_response(body, status_code=503, headers={"Retry-After": "5"})


def _exports(request: Request) -> Exports:
    exports: Exports = request.app.state.exports
    return exports


def error_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    body = Error(error=error.error, message=error.message)
    return json_response(body, status_code=error.status, headers=headers)


class _Api:
    def __init__(self, events: EventsWatcher) -> None:
        self._events = events
        self._rebuild: threading.Thread | None = None
        self._tokens = TokenCache()

    def handler(self, endpoint: Handler, known: tuple[str, ...], scope: Scope) -> Handler:
        async def handle(request: Request) -> Response:
            try:
                await authorize(request, scope, self._tokens)
                _known_only(request, known)
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
                _Unavailable,
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

    def _event(self, request: Request) -> str:
        slug: str = request.path_params["event"]
        if self._events.event(slug) is None:
            raise ApiError(404, "unknown_event", f"no JTE event {slug[:64]!r} is configured")
        return slug

    async def projections(self, request: Request) -> Response:
        url: str = request.app.state.database_url
        try:
            statuses = await asyncio.to_thread(_read_status, url)
        except psycopg.Error as error:
            raise _Unavailable from error
        return json_response(m.Projections(statuses))

    async def rebuild(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in (*VIEW_NAMES, "all"):
            raise ApiError(404, "unknown_view", f"views are {', '.join(VIEW_NAMES)} or all")
        views = list(VIEW_NAMES) if name == "all" else [name]
        skip_poison = _flag(request.query_params, "skip_poison") or False
        if self._rebuild is not None and self._rebuild.is_alive():
            raise ApiError(409, "busy", "a rebuild started here is still running")
        self._rebuild = threading.Thread(
            target=_rebuild_in_background,
            args=(request.app.state.database_url, views, skip_poison),
            daemon=True,
        )
        self._rebuild.start()
        body = m.RebuildStarted(status="rebuilding", views=views)
        return json_response(body, status_code=202)

    async def events(self, request: Request) -> Response:
        pool: asyncpg.Pool = request.app.state.pool
        rows = await pool.fetch(
            "SELECT e.slug, (SELECT count(*) FROM analytics.roster r WHERE r.event = e.slug "
            "AND r.status = 'registered') AS registered, coalesce((SELECT inside_now FROM "
            "analytics.occupancy o WHERE o.event = e.slug), 0) AS inside_now "
            "FROM unnest($1::text[]) AS e(slug) ORDER BY e.slug",
            list(self._events.events),
        )
        events = [m.EventSummary(event=r[0], registered=r[1], inside_now=r[2]) for r in rows]
        return json_response(m.Events(events))

    async def roster(self, request: Request) -> Response:
        slug = self._event(request)
        params = request.query_params
        status = _choice(params, "status", STATUSES, default=None)
        conditions = ["event = $1"]
        args: list[Any] = [slug]
        if status is None:
            conditions.append("status <> 'deleted'")  # deleted attendees are kept, not listed
        elif status != "all":
            args.append(status)
            conditions.append(f"status = ${len(args)}")
        for name, column in (("checked_in", "checked_in"), ("paid", "paid")):
            flag = _flag(params, name)
            if flag is not None:
                args.append(flag)
                conditions.append(f"{column} = ${len(args)}")
        role = params.get("role")
        if role is not None:
            args.append(_text_param("role", role))
            conditions.append(f"role = ${len(args)}")
        q = params.get("q")
        if q is not None:
            args.append(_like(_text_param("q", q)))
            conditions.append(f"({SEARCH_TEXT}) ILIKE ${len(args)}")
        where = " AND ".join(conditions)
        if _wants_csv(request):
            query = (
                f"SELECT {_ATTENDEE_COLUMNS} FROM analytics.roster "
                f"WHERE {where} ORDER BY {ORDER_KEY}"
            )
            return await _exports(request).stream(query, args, f"roster-{slug}.csv")
        limit = _limit(params)
        cursor = _decode_cursor(params.get("cursor"), 3)
        if cursor is not None:
            args += cursor
            n = len(args)
            conditions.append(f"({ORDER_KEY}) > (${n - 2}, ${n - 1}, ${n})")
            where = " AND ".join(conditions)
        args.append(limit + 1)
        # A search of 3+ characters can use the trigram index; fewer, and walking the name
        # order until the page is full is the cheaper plan.
        page_query = _searched_page if q is not None and len(q) >= 3 else _ordered_page
        rows = await request.app.state.pool.fetch(page_query(where, len(args)), *args)
        items = [_attendee(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor([last["k1"], last["k2"], last["attendee_id"]])
        return json_response(m.RosterPage(event=slug, items=items, next_cursor=next_cursor))

    async def attendee(self, request: Request) -> Response:
        slug = self._event(request)
        attendee_id = request.path_params["attendee_id"]
        if len(attendee_id) > 200 or "\x00" in attendee_id:
            raise ApiError(404, "unknown_attendee", "no such attendee")
        pool: asyncpg.Pool = request.app.state.pool
        row = await pool.fetchrow(
            f"SELECT {_ATTENDEE_COLUMNS} FROM analytics.roster "
            "WHERE event = $1 AND attendee_id = $2",
            slug,
            attendee_id,
        )
        if row is None:
            raise ApiError(404, "unknown_attendee", f"no attendee {attendee_id[:64]!r} in {slug!r}")
        presence = await pool.fetchrow(
            "SELECT inside, entered_at, check_ins, check_outs, repeated_check_ins, "
            "stray_check_outs, first_in_at, last_in_at, last_out_at FROM analytics.presence "
            "WHERE event = $1 AND attendee_id = $2",
            slug,
            attendee_id,
        )
        history = await _history(pool, slug, attendee_id)
        detail = m.AttendeeDetail(
            event=slug,
            attendee=_attendee(row),
            presence=m.Presence(**dict(presence)) if presence else None,
            history=history,
        )
        return json_response(detail)

    async def occupancy(self, request: Request) -> Response:
        slug = self._event(request)
        at = _time(request.query_params, "at")
        pool: asyncpg.Pool = request.app.state.pool
        if at is not None:
            return json_response(await _occupancy_at(pool, slug, at))
        row = await pool.fetchrow(
            "SELECT o.inside_now, o.peak, o.peak_at, o.check_ins, o.check_outs, "
            "o.repeated_check_ins, o.stray_check_outs, o.unique_attendees_inside, "
            "(SELECT coalesce(sum(entered), 0) FROM analytics.occupancy_timeline t "
            "WHERE t.event = o.event) AS entries, (SELECT coalesce(sum(exited), 0) "
            "FROM analytics.occupancy_timeline t WHERE t.event = o.event) AS exits "
            "FROM analytics.occupancy o WHERE o.event = $1",
            slug,
        )
        if row is None:
            return json_response(_nobody(slug))
        return json_response(
            m.Occupancy(
                event=slug,
                at=None,
                inside=row["inside_now"],
                peak=row["peak"],
                peak_at=row["peak_at"],
                entries=row["entries"],
                exits=row["exits"],
                unique_attendees_inside=row["unique_attendees_inside"],
                check_ins=row["check_ins"],
                check_outs=row["check_outs"],
                repeated_check_ins=row["repeated_check_ins"],
                stray_check_outs=row["stray_check_outs"],
            )
        )

    async def timeline(self, request: Request) -> Response:
        slug = self._event(request)
        params = request.query_params
        name = _choice(params, "bucket", tuple(BUCKETS), default="5m")
        assert name is not None
        width = BUCKETS[name]
        pool: asyncpg.Pool = request.app.state.pool
        start, end = _time(params, "from"), _time(params, "to")
        if start is None or end is None:
            first, last = await pool.fetchrow(
                "SELECT min(minute), max(minute) FROM analytics.occupancy_timeline "
                "WHERE event = $1",
                slug,
            ) or (None, None)
            # Clamped as `from` and `to` are: a stored time near datetime's end (a sender's
            # bogus one) must not overflow the last bucket's end.
            first, last = (min(t, _LATEST - width) if t else None for t in (first, last))
            start = start or (_floor(first, width) if first else None)
            end = end or (_floor(last, width) + width if last else None)
        if start is None or end is None:
            return self._timeline_answer(request, slug, name, None, None, [])
        if end <= start:
            raise ApiError(400, "bad_parameter", "`to` must be after `from`")
        if (end - start) / width > MAX_BUCKETS:
            raise ApiError(
                400, "bad_parameter", f"more than {MAX_BUCKETS} buckets: narrow the range"
            )
        buckets = await _buckets(pool, slug, start, end, width)
        return self._timeline_answer(request, slug, name, start, end, buckets)

    def _timeline_answer(
        self,
        request: Request,
        slug: str,
        name: str,
        start: datetime | None,
        end: datetime | None,
        buckets: list[m.Bucket],
    ) -> Response:
        if _wants_csv(request):
            rows = ([b.start, b.end, b.entered, b.exited, b.inside] for b in buckets)
            header = ["start", "end", "entered", "exited", "inside"]
            return csv_rows(header, rows, f"occupancy-{slug}.csv")
        timeline = m.Timeline(event=slug, bucket=name, start=start, end=end, buckets=buckets)  # type: ignore[arg-type]
        return json_response(timeline)

    async def check_ins(self, request: Request) -> Response:
        slug = self._event(request)
        limit = _limit(request.query_params, default=20, maximum=200)
        rows = await request.app.state.pool.fetch(
            "SELECT p.attendee_id, r.first_name, r.last_name, p.last_in_at, p.inside "
            "FROM analytics.presence p LEFT JOIN analytics.roster r "
            "ON r.event = p.event AND r.attendee_id = p.attendee_id "
            "WHERE p.event = $1 AND p.last_in_at IS NOT NULL ORDER BY p.last_in_at DESC LIMIT $2",
            slug,
            limit,
        )
        items = [
            m.CheckIn(attendee_id=r[0], first_name=r[1], last_name=r[2], at=r[3], inside=r[4])
            for r in rows
        ]
        return json_response(m.CheckIns(slug, items))

    async def payments(self, request: Request) -> Response:
        slug = self._event(request)
        params = request.query_params
        conditions = ["event = $1"]
        args: list[Any] = [slug]
        for name in ("currency", "method"):
            value = params.get(name)
            if value is not None:
                text = _text_param(name, value)
                args.append(text.upper() if name == "currency" else text.lower())
                conditions.append(f"{name} = ${len(args)}")
        columns = "entry_key, attendee_id, amount, currency, method, reference, paid_at"
        if _wants_csv(request):
            where = " AND ".join(conditions)
            query = (
                f"SELECT {columns} FROM analytics.payments "
                f"WHERE {where} ORDER BY paid_at, entry_key"
            )
            return await _exports(request).stream(query, args, f"payments-{slug}.csv")
        limit = _limit(params)
        cursor = _decode_cursor(params.get("cursor"), 2)
        if cursor is not None:
            paid_at = parse_time(cursor[0])
            if paid_at is None:
                raise ApiError(400, "bad_parameter", "`cursor` is not one this API gave out")
            args += [paid_at, cursor[1]]
            conditions.append(f"(paid_at, entry_key) > (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)
        where = " AND ".join(conditions)
        rows = await request.app.state.pool.fetch(
            f"SELECT {columns} FROM analytics.payments WHERE {where} "
            f"ORDER BY paid_at, entry_key LIMIT ${len(args)}",
            *args,
        )
        items = [m.Payment(**dict(row)) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = _encode_cursor([last.paid_at.isoformat(), last.entry_key])
        return json_response(m.PaymentsPage(event=slug, items=items, next_cursor=next_cursor))

    async def payment_summary(self, request: Request) -> Response:
        slug = self._event(request)
        pool: asyncpg.Pool = request.app.state.pool
        by_currency = await pool.fetch(
            "SELECT currency, sum(payments)::bigint AS payments, sum(amount) AS amount "
            "FROM analytics.payment_totals WHERE event = $1 GROUP BY currency ORDER BY currency",
            slug,
        )
        by_method = await pool.fetch(
            "SELECT currency, method, sum(payments)::bigint AS payments, sum(amount) AS amount "
            "FROM analytics.payment_totals WHERE event = $1 GROUP BY currency, method "
            "ORDER BY currency, method",
            slug,
        )
        by_day = await pool.fetch(
            "SELECT day, currency, sum(payments)::bigint AS payments, sum(amount) AS amount "
            "FROM analytics.payment_totals WHERE event = $1 GROUP BY day, currency "
            "ORDER BY day, currency",
            slug,
        )
        summary = m.PaymentSummary(
            event=slug,
            by_currency=[m.CurrencyTotal(**dict(row)) for row in by_currency],
            by_method=[m.MethodTotal(**dict(row)) for row in by_method],
            by_day=[m.DayTotal(**dict(row)) for row in by_day],
        )
        return json_response(summary)


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


async def _history(pool: asyncpg.Pool, slug: str, attendee_id: str) -> list[m.DeliveryRecord]:
    """The attendee's deliveries from the store, in position order, as read now."""
    rows = await pool.fetch(
        "SELECT e.notification_id, e.state FROM analytics.attendee_deliveries h "
        "JOIN rollcall.deliveries_events e ON e.notification_id = h.position "
        "WHERE h.event = $1 AND h.attendee_id = $2 ORDER BY e.notification_id",
        slug,
        attendee_id,
    )
    history = []
    for position, state in rows:
        stored = _decode_stored(state)
        reading = interpret(stored.body)
        if not isinstance(reading, Interpreted):
            continue
        history.append(
            m.DeliveryRecord(
                position=position,
                received_at=stored.timestamp,
                event_type=reading.event_type,
                occurred_at=reading.occurred_at,
                delivery_id=reading.delivery_id,
                attendee=msgspec.Raw(_encode_sent(reading.attendee)),
            )
        )
    return history


class _Stored(msgspec.Struct):
    timestamp: datetime
    body: bytes


_decode_stored: Final = msgspec.json.Decoder(_Stored).decode
# The attendee object as sent: numbers stay numbers, with their digits.
_encode_sent: Final = msgspec.json.Encoder(decimal_format="number").encode


def _nobody(slug: str) -> m.Occupancy:
    """An event nobody has checked in to yet."""
    return m.Occupancy(
        event=slug, at=None, inside=0, peak=0, peak_at=None, entries=0, exits=0,
        unique_attendees_inside=0, check_ins=0, check_outs=0, repeated_check_ins=0,
        stray_check_outs=0,
    )  # fmt: skip


async def _occupancy_at(pool: asyncpg.Pool, slug: str, at: datetime) -> m.Occupancy:
    """Inside at `at`, and the stays started and ended and the peak up to then, from the
    exact changes."""
    row = await pool.fetchrow(
        "SELECT coalesce(sum(delta), 0) AS inside, "
        "count(*) FILTER (WHERE delta > 0) AS entries, "
        "count(*) FILTER (WHERE delta < 0) AS exits, "
        "count(DISTINCT attendee_id) FILTER (WHERE delta > 0) AS unique_inside "
        "FROM analytics.occupancy_changes WHERE event = $1 AND at <= $2",
        slug,
        at,
    )
    peak = await pool.fetchrow(
        "SELECT running, at FROM (SELECT at, sum(delta) OVER (ORDER BY at, delta "
        "ROWS UNBOUNDED PRECEDING) AS running FROM analytics.occupancy_changes "
        "WHERE event = $1 AND at <= $2) s WHERE running > 0 ORDER BY running DESC, at LIMIT 1",
        slug,
        at,
    )
    return m.Occupancy(
        event=slug,
        at=at,
        inside=row["inside"],
        peak=peak["running"] if peak else 0,
        peak_at=peak["at"] if peak else None,
        entries=row["entries"],
        exits=row["exits"],
        unique_attendees_inside=row["unique_inside"],
        check_ins=None,
        check_outs=None,
        repeated_check_ins=None,
        stray_check_outs=None,
    )


async def _buckets(
    pool: asyncpg.Pool, slug: str, start: datetime, end: datetime, width: timedelta
) -> list[m.Bucket]:
    """Per bucket: arrivals, departures, and how many were inside at its end. Whole minutes
    come from the per-minute table (a day is at most 1,440 rows); other bounds from the exact
    changes."""
    whole_minutes = all(t.second == 0 and t.microsecond == 0 for t in (start, end))
    source = "analytics.occupancy_timeline" if whole_minutes else "analytics.occupancy_changes"
    time, entered, exited = (
        ("minute", "entered", "exited")
        if whole_minutes
        else ("at", "(delta > 0)::int", "(delta < 0)::int")
    )
    inside = await pool.fetchval(
        f"SELECT coalesce(sum({entered} - {exited}), 0) FROM {source} "
        f"WHERE event = $1 AND {time} < $2",
        slug,
        start,
    )
    rows = await pool.fetch(
        f"SELECT floor(extract(epoch FROM {time} - $2) / $4)::bigint AS n, "
        f"sum({entered})::bigint AS entered, sum({exited})::bigint AS exited FROM {source} "
        f"WHERE event = $1 AND {time} >= $2 AND {time} < $3 GROUP BY n",
        slug,
        start,
        end,
        width.total_seconds(),
    )
    per_bucket = {row["n"]: (row["entered"], row["exited"]) for row in rows}
    buckets = []
    cursor, n = start, 0
    while cursor < end:
        came, went = per_bucket.get(n, (0, 0))
        inside += came - went
        buckets.append(
            m.Bucket(start=cursor, end=cursor + width, entered=came, exited=went, inside=inside)
        )
        cursor, n = cursor + width, n + 1
    return buckets


def _ordered_page(where: str, limit_arg: int) -> str:
    """One roster page read in the name index's order."""
    return (
        f"SELECT {_ATTENDEE_COLUMNS}, coalesce(lower(last_name), '') AS k1, "
        f"coalesce(lower(first_name), '') AS k2 FROM analytics.roster WHERE {where} "
        f"ORDER BY {ORDER_KEY} LIMIT ${limit_arg}"
    )


def _searched_page(where: str, limit_arg: int) -> str:
    """One page of a search: collect the matching keys first, then read only the page's rows.

    Left alone, the planner walks the name index and filters row by row, because with a LIMIT
    it assumes matches are spread evenly; for a surname that is ~60k heap reads (140 ms)."""
    return (
        "WITH hits AS MATERIALIZED (SELECT attendee_id AS hit_id, "
        "coalesce(lower(last_name), '') AS k1, coalesce(lower(first_name), '') AS k2 "
        f"FROM analytics.roster WHERE {where}), "
        f"page AS (SELECT * FROM hits ORDER BY k1, k2, hit_id LIMIT ${limit_arg}) "
        f"SELECT {_ATTENDEE_COLUMNS}, page.k1, page.k2 FROM page JOIN analytics.roster r "
        "ON r.event = $1 AND r.attendee_id = page.hit_id ORDER BY page.k1, page.k2, page.hit_id"
    )


def _attendee(row: asyncpg.Record) -> m.Attendee:
    values = dict(row)
    values.pop("k1", None)
    values.pop("k2", None)
    values["fields"] = msgspec.Raw(values["fields"].encode())
    return m.Attendee(**values)


def _known_only(request: Request, known: tuple[str, ...]) -> None:
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


def _wants_csv(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None and fmt not in ("json", "csv"):
        raise ApiError(400, "bad_parameter", "`format` must be json or csv")
    if fmt is not None:
        return fmt == "csv"
    return "text/csv" in request.headers.get("accept", "")


def _limit(params: Any, default: int = 50, maximum: int = MAX_LIMIT) -> int:
    text = params.get("limit")
    if text is None:
        return default
    # isascii(): str.isdigit() also accepts digits like "²" that int() refuses.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= maximum:
        raise ApiError(400, "bad_parameter", f"`limit` must be a whole number from 1 to {maximum}")
    return int(text)


def _flag(params: Any, name: str) -> bool | None:
    text = params.get(name)
    if text is None:
        return None
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ApiError(400, "bad_parameter", f"`{name}` must be true or false")


def _choice(params: Any, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    text = params.get(name)
    if text is None:
        return default
    if text not in allowed:
        raise ApiError(400, "bad_parameter", f"`{name}` must be one of {', '.join(allowed)}")
    return str(text)


def _text_param(name: str, value: str) -> str:
    if not value or len(value) > 200 or "\x00" in value:
        raise ApiError(400, "bad_parameter", f"`{name}` must be 1 to 200 characters")
    return value


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _time(params: Any, name: str) -> datetime | None:
    text = params.get(name)
    if text is None:
        return None
    number = text.strip().lstrip("-")
    is_number = number.isascii() and number.isdigit() and len(number) <= 18
    when = parse_time(int(text)) if is_number else parse_time(text)
    if when is None or not datetime(1970, 1, 1, tzinfo=UTC) <= when <= _LATEST:
        raise ApiError(400, "bad_parameter", f"`{name}` must be an ISO 8601 time")
    return when


def _floor(when: datetime, width: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((when - epoch) // width) * width


def _encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(values)).decode().rstrip("=")


def _decode_cursor(text: str | None, size: int) -> list[str] | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        values = msgspec.json.decode(raw, type=list[str])
    except (ValueError, msgspec.DecodeError):
        raise ApiError(400, "bad_parameter", "`cursor` is not one this API gave out") from None
    # A NUL cannot reach PostgreSQL's text: no cursor this API gave out has one.
    if len(values) != size or any("\x00" in value for value in values):
        raise ApiError(400, "bad_parameter", "`cursor` is not one this API gave out")
    return values
