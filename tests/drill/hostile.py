"""The hostile scenario (`scripts/drill hostile`), where the sender is the enemy.

Thousands of generated requests (mutated signed deliveries, malformed HTTP, random analyst
queries with good and bad tokens), 100 MB bodies, near-limit deliveries and a rebuild over
them, slow and idle clients outnumbering the connection cap, unverified megabyte bodies
outnumbering their memory bound (service/drill/crowd.py), hostile reads (formula cells, an
overflowing field, slow export readers: reads.py), and DESIGN's named cases against one serve
process. The promises: no 5xx and no hang for anything a sender can send, genuine deliveries
and health checks answered promptly throughout, a server still healthy and not exhausted
afterwards, and nothing unverified stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import select
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Final

import httpx
import msgspec

from service.config import DEFAULT_HEADER_LIMIT, EventConfig
from service.jte.signing import sign
from service.jte.simulator import SimulatedDelivery
from tests.drill.access import scan_logs
from tests.drill.crowd import (
    CAP,
    DEADLINE,
    UNVERIFIED_MB,
    Flood,
    Slow,
    check_flood,
    check_slow,
    slow_clients,
    slowest,
    unverified_flood,
)
from tests.drill.fuzz import OK, ApiFacts, Generator, Probe, Tally, fire
from tests.drill.harness import (
    DrillError,
    Serve,
    Workspace,
    fresh_deliveries,
    memory_mb,
    reset_peak,
    stored_deliveries,
    wait_for,
)
from tests.drill.reads import EXPORT_SLOTS, check_reads, hostile_reads, reads_figures
from tests.drill.report import Finding, Size, top
from tests.drill.snapshot import wait_until_caught_up
from tests.drill.wire import (
    HANG,
    Answer,
    Headers,
    exchange,
    parse_answer,
    request,
    webhook_path,
    wire_headers,
)

CONNECTIONS: Final = 16
SEED: Final = 20_261_127
RSS_GROWTH_MB: Final = 50  # what refusing a 100 MB body may cost the server
REBUILD_GROWTH_MB: Final = 150  # what rebuilding over near-limit deliveries may cost it


# --- 100 MB bodies ---------------------------------------------------------------------------


class BigBody(msgspec.Struct, frozen=True, kw_only=True):
    """A huge body sent to intake: the answer, how fast, and the server's memory meanwhile."""

    status: int
    seconds: float
    sent_mb: float
    rss_before_mb: float
    peak_growth_mb: float


def big_body(server: Serve, event: EventConfig, megabytes: int, *, chunked: bool) -> BigBody:
    """POST a validly signed body of `megabytes` MB, declared or chunked, as fast as the
    server takes it; stop sending once it answers."""
    pieces = list(_big_pieces(megabytes))  # the same 64 KiB object, mostly: little memory
    digest = hmac.new(event.secrets[0].encode(), b"", hashlib.sha256)
    for piece in pieces:
        digest.update(piece)
    headers: Headers = [
        (b"Content-Type", b"application/json"),
        (b"X-Webhook-Signature", b"sha256=" + digest.hexdigest().encode()),
    ]
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    total = -1 if chunked else sum(len(p) for p in pieces)
    head = request(b"POST", b"/webhooks/jte", headers, length=total)
    rss_before, reset = memory_mb(server.pid)[0], reset_peak(server.pid)
    hwm_before = memory_mb(server.pid)[1]
    status, seconds, sent = _push(server.port, head, pieces, chunked)
    growth = memory_mb(server.pid)[1] - (rss_before if reset else hwm_before)
    return BigBody(
        status=status,
        seconds=seconds,
        sent_mb=sent / 2**20,
        rss_before_mb=rss_before,
        peak_growth_mb=max(0.0, growth),
    )


def _big_pieces(megabytes: int) -> Iterator[bytes]:
    prefix = b'{"event":"AttendeeRegistered","id":"big","attendee":{"id":"big","pad":"'
    suffix = b'"}}'
    pad = megabytes * 2**20 - len(prefix) - len(suffix)
    yield prefix
    piece = b"x" * 65536
    for _ in range(pad // len(piece)):
        yield piece
    yield b"x" * (pad % len(piece)) + suffix


def _push(port: int, head: bytes, pieces: Sequence[bytes], chunked: bool) -> tuple[int, float, int]:
    """Send head and body while watching for the answer; (status, seconds to it, body
    bytes the server let in)."""
    framed = (b"%x\r\n%s\r\n" % (len(p), p) if chunked else p for p in pieces)
    ending = [b"0\r\n\r\n"] if chunked else []
    outgoing = itertools.chain(framed, ending)
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as sock:
        sock.sendall(head)
        started = time.monotonic()
        received, sent, sending = b"", 0, True
        while time.monotonic() - started < HANG and b"\r\n\r\n" not in received:
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 1.0)
            try:
                if readable:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                elif writable:
                    piece = next(outgoing, None)
                    if piece is None:
                        sending = False
                    else:
                        sock.sendall(piece)
                        sent += len(piece)
            except OSError:
                sending = False  # the server closed its side: only read now
        status, _ = parse_answer(received)
        return status, time.monotonic() - started, sent


# --- Big verified deliveries, and a rebuild over them -----------------------------------------


class Heavy(msgspec.Struct, frozen=True, kw_only=True):
    """Near-limit verified deliveries stored, then every view rebuilt over them: what each
    cost the server at its peak."""

    deliveries: int
    stored: int  # answered 202 quarantined
    store_growth_mb: float
    rebuild_growth_mb: float
    rebuild_seconds: float


def heavy_store(
    server: Serve, url: str, event: EventConfig, count: int, admin: str, tally: Tally
) -> Heavy:
    """`count` validly signed deliveries just under intake's 1 MiB limit (unreadable: kept,
    quarantined), then a rebuild of every view, which reads them all again."""
    probes = (_heavy_probe(event, n) for n in range(count))
    quarantined = tally.statuses[202]
    rss = memory_mb(server.pid)[0]
    reset_peak(server.pid)
    asyncio.run(fire(server.port, probes, tally, 4))
    # The fuzz may have asked for a strict rebuild that stopped on its poisoned payment: its
    # unfinished versions stay beside the live ones until the rebuild below replaces them.
    wait_until_caught_up(url, 120, beside_a_build=True)
    store_growth = memory_mb(server.pid)[1] - rss
    rss = memory_mb(server.pid)[0]
    reset_peak(server.pid)
    seconds = rebuild_all(server.url, admin)
    return Heavy(
        deliveries=count,
        stored=tally.statuses[202] - quarantined,
        store_growth_mb=store_growth,
        rebuild_growth_mb=memory_mb(server.pid)[1] - rss,
        rebuild_seconds=seconds,
    )


def _heavy_probe(event: EventConfig, n: int) -> Probe:
    body = b'{"id":"heavy-%d","note":"' % n + b"h" * 1_000_000 + b'"}'
    headers = wire_headers(sign(event, body, now=time.time()))
    wire = request(b"POST", webhook_path(event.slug), headers, body)
    return Probe(kind="heavy", wire=wire, expect=frozenset({202}), genuine=(event.slug, body))


def rebuild_all(base_url: str, admin: str, timeout: float = 300) -> float:
    """Rebuild every view through the analyst API and wait until each new version is live;
    seconds taken. Poison is dead-lettered, as the live runner does: the fuzz signs payments
    no ledger can hold (an amount of 1E+999999), which a strict build refuses."""
    started = time.monotonic()
    headers = {"authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        views = client.get("/v1/projections").json()["views"]
        before = {v["view"]: v["version"] for v in views}
        # What stopped an earlier strict build (the fuzz's) shows until this one clears it.
        stale = {v["view"]: (v["rebuilding"] or {}).get("error") for v in views}

        def started_one() -> bool:  # a rebuild the fuzz asked for may still be running: 409
            answer = client.post("/v1/projections/all/rebuild?skip_poison=true")
            return answer.status_code == 202

        def done() -> bool:
            views = client.get("/v1/projections").json()["views"]
            stopped = [
                error
                for v in views
                if (error := (v["rebuilding"] or {}).get("error")) and error != stale[v["view"]]
            ]
            if stopped:
                raise DrillError(f"the rebuild through the API stopped: {stopped[0]}")
            return all(v["version"] > before[v["view"]] and not v["rebuilding"] for v in views)

        if wait_for(started_one, timeout, 0.5) is None or wait_for(done, timeout, 0.2) is None:
            raise DrillError("the rebuild through the API did not finish")
    return time.monotonic() - started


# --- The hostile scenario -------------------------------------------------------------------


class Named(msgspec.Struct, frozen=True):
    """One of DESIGN's named cases and the answer it must get."""

    name: str
    wire: bytes
    expect: int
    genuine: tuple[str, bytes] | None = None


def hostile(ws: Workspace, size: Size) -> Finding:
    """`size.hostile_requests` generated hostile requests against intake and the analyst API
    of one serve process, then 100 MB bodies, slow clients and DESIGN's named cases."""
    with ws.database("hostile") as url:
        server = ws.serve(
            "hostile",
            url,
            ROLLCALL_HEADER_TIMEOUT=str(DEADLINE),
            ROLLCALL_BODY_TIMEOUT=str(DEADLINE),
            ROLLCALL_HEADER_LIMIT=str(DEFAULT_HEADER_LIMIT),
            ROLLCALL_MAX_CONNECTIONS=str(CAP),
            ROLLCALL_UNVERIFIED_BODY_MEMORY=str(UNVERIFIED_MB * 2**20),
            ROLLCALL_EXPORT_CONNECTIONS=str(EXPORT_SLOTS),
        ).start()
        tally = Tally()
        facts = seed_store(ws, server, url, tally)
        big = [
            big_body(server, ws.default, size.big_body_mb, chunked=chunked)
            for chunked in (False, True)
        ]
        fresh = iter(fresh_deliveries(SEED + 7, 40))
        flood = flood_attack(server, ws.default, next(fresh), tally)
        before = tally.sent
        probes = Generator(SEED, ws, facts).probes(size.hostile_requests)
        elapsed = asyncio.run(fire(server.port, probes, tally, CONNECTIONS))
        generated = tally.sent - before
        named = run_named(server.port, ws.default, fresh, tally)
        heavy = heavy_store(server, url, ws.default, size.big_deliveries, facts.admin, tally)
        reads = hostile_reads(server, url, ws.default, facts.read, size, tally)
        slow = slow_attack(server.port, ws.default, fresh, size.slow_clients, tally)
        healthy = health(server, ws.default, next(fresh), tally)
        finding = Finding(
            scenario="hostile",
            load=f"{generated:,} generated requests, {CONNECTIONS} at a time",
            faults=(
                f"{size.big_body_mb} MB bodies, {CAP} idle and {size.slow_clients} slow clients, "
                f"{flood.bodies} unverified 1 MB bodies, {len(named)} named cases, "
                f"{heavy.deliveries} 1 MB deliveries rebuilt, "
                f"formula cells, a 1e200000 field, {size.slow_exports} slow export readers"
            ),
            bad_inputs=generated
            + len(big)
            + len(slow.drips)
            + flood.bodies
            + len(named)
            + reads.seeded,
        )
        check_answers(finding, tally, generated, size)
        _check_big(finding, big)
        _check_heavy(finding, heavy)
        check_slow(finding, slow, size)
        check_flood(finding, flood, size)
        _check_named(finding, named)
        check_reads(finding, reads, size)
        finding.check(not healthy, "not healthy afterwards: " + "; ".join(healthy))
        _check_store(finding, url, tally)
        scan_logs(finding, ws, [server.log])
        rss_after = memory_mb(server.pid)[0]
        server.stop()
        finding.figures = (
            _hostile_figures(
                tally, generated, elapsed, big, heavy, slow, flood, named, rss_after, size
            )
            + "; "
            + reads_figures(reads)
        )
        return finding


def delivery_probe(event: EventConfig, delivery: SimulatedDelivery, kind: str) -> Probe:
    """A genuine delivery signed now for `event`."""
    headers = wire_headers(
        sign(event, delivery.body, now=time.time(), delivery_id=delivery.delivery_id)
    )
    wire = request(b"POST", webhook_path(event.slug), headers, delivery.body)
    return Probe(kind=kind, wire=wire, expect=OK, genuine=(event.slug, delivery.body))


def seed_store(ws: Workspace, server: Serve, url: str, tally: Tally) -> ApiFacts:
    """Real deliveries for both events, so that the API has rows, cursors and attendee ids."""
    probes = [
        delivery_probe(event, delivery, "seed")
        for event, seed in ((ws.default, SEED + 3), (ws.standard, SEED + 4))
        for delivery in fresh_deliveries(seed, 150)
    ]
    asyncio.run(fire(server.port, iter(probes), tally, 4))
    wait_until_caught_up(url, 60)
    read, admin = ws.token(url, "read"), ws.token(url, "admin")
    cursors, attendees = [], []
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {read}"}) as client:
        for path in ("/v1/events/default/roster?limit=2", "/v1/events/default/payments?limit=1"):
            cursor = client.get(path).json().get("next_cursor")
            if cursor:
                cursors.append(cursor)
        for item in client.get("/v1/events/default/roster?limit=20").json()["items"]:
            attendees.append(item["attendee_id"])
    return ApiFacts(read=read, admin=admin, cursors=tuple(cursors), attendees=tuple(attendees))


def run_named(
    port: int, event: EventConfig, fresh: Iterator[SimulatedDelivery], tally: Tally
) -> list[tuple[Named, Answer]]:
    """DESIGN's named cases, one at a time, each with the answer its row gives."""
    answers = []
    for case in named_cases(event, fresh):
        answer = asyncio.run(exchange(port, case.wire))
        expect = frozenset({case.expect})
        tally.add(
            Probe(kind=case.name, wire=case.wire, expect=expect, genuine=case.genuine), answer
        )
        answers.append((case, answer))
    return answers


def named_cases(event: EventConfig, fresh: Iterator[SimulatedDelivery]) -> list[Named]:
    """Deeply nested JSON, invalid UTF-8, huge headers, wrong content types, unknown JTE
    events and types, an unreadable occurrence time, and a delivery sent twice."""

    def signed(name: str, body: bytes, expect: int, *extra: tuple[bytes, bytes]) -> Named:
        headers = wire_headers(sign(event, body, now=time.time())) + list(extra)
        wire = request(b"POST", b"/webhooks/jte", headers, body)
        return Named(name, wire, expect, ("default", body))

    def typed(name: str, content_type: bytes | None) -> Named:
        case = signed(name, next(fresh).body, 415)
        head, _, body = case.wire.partition(b"\r\n\r\n")
        kept = [line for line in head.split(b"\r\n") if not line.startswith(b"content-type")]
        if content_type is not None:
            kept.append(b"Content-Type: " + content_type)
        return Named(name, b"\r\n".join(kept) + b"\r\n\r\n" + body, 415, case.genuine)

    once = signed("a delivery", next(fresh).body, 200)
    elsewhere = signed("unknown JTE event slug", next(fresh).body, 404)
    late = b'{"event":"AttendeeCheckedIn","id":"named-late","occurredAt":'
    late += b'"0001-01-01T00:00:00+14:00","attendee":{"id":"named-late"}}'
    unknown = b'{"event":"AttendeeTeleported","id":"named-unknown","attendee":{"id":"x"}}'
    return [
        signed("deeply nested JSON list (100k levels)", b"[" * 100_000 + b"]" * 100_000, 202),
        signed(
            "deeply nested JSON object (100k levels)",
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
            202,
        ),
        signed("invalid UTF-8", b'{"event":"AttendeeRegistered","attendee":{"id":"\xff"}}', 202),
        signed("a 1 MB header", next(fresh).body, 431, (b"X-Padding", b"p" * 1_000_000)),
        signed(
            "1 MB of small headers",
            next(fresh).body,
            431,
            *[(b"X-P%d" % i, b"p" * 40) for i in range(20_000)],
        ),
        typed("content type text/plain", b"text/plain"),
        typed("content type form", b"application/x-www-form-urlencoded"),
        typed("no content type", None),
        Named(
            elsewhere.name,
            elsewhere.wire.replace(b" /webhooks/jte ", b" /webhooks/jte/no-such-conference ", 1),
            404,
            elsewhere.genuine,
        ),
        signed("unknown JTE event type", unknown, 202),
        signed("occurrence time out of range", late, 200),
        once,
        Named("the same delivery again", once.wire, 200, once.genuine),
    ]


def slow_attack(
    port: int,
    event: EventConfig,
    fresh: Iterator[SimulatedDelivery],
    count: int,
    tally: Tally,
) -> Slow:
    """Slow and idle clients, more than the connection cap, and genuine deliveries and health
    checks sent while they hold on."""
    normal = [delivery_probe(event, next(fresh), "delivery during slow clients") for _ in range(5)]
    slow = asyncio.run(slow_clients(port, count, [p.wire for p in normal]))
    for probe, answer in zip(normal, slow.during, strict=True):
        tally.add(probe, answer)
    return slow


def flood_attack(
    server: Serve, event: EventConfig, delivery: SimulatedDelivery, tally: Tally
) -> Flood:
    """Unverified megabyte bodies held open, more than their memory bound, and a genuine
    delivery sent meanwhile."""
    probe = delivery_probe(event, delivery, "delivery during unverified bodies")
    flood = unverified_flood(server, 2**20, probe.wire)
    tally.add(probe, flood.delivery)
    return flood


def health(
    server: Serve, event: EventConfig, delivery: SimulatedDelivery, tally: Tally
) -> list[str]:
    """What is wrong with the server now, if anything: alive, ready, and accepting."""
    if server.process is None or server.process.poll() is not None:
        return ["the server process died"]
    problems = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for path in ("/healthz", "/readyz"):
            status = client.get(path).status_code
            if status != 200:
                problems.append(f"{path} answered {status}")
    probe = delivery_probe(event, delivery, "delivery afterwards")
    answer = asyncio.run(exchange(server.port, probe.wire))
    tally.add(probe, answer)
    if answer.status != 200 or b'"accepted"' not in answer.body:
        problems.append(f"a fresh delivery got {answer.status} {answer.body[:80]!r}")
    return problems


def check_answers(finding: Finding, tally: Tally, generated: int, size: Size) -> None:
    errors = sum(tally.server_errors.values())
    hangs = sum(tally.hangs.values())
    unexpected = sum(tally.unexpected.values())
    finding.check(generated >= size.hostile_requests, f"only {generated} requests generated")
    finding.check(errors == 0, f"{errors} 5xx answers ({top(tally.server_errors)})")
    finding.check(hangs == 0, f"{hangs} requests hung ({top(tally.hangs)})")
    finding.check(
        unexpected == 0, f"{unexpected} answers not as DESIGN says ({top(tally.unexpected)})"
    )


def _check_big(finding: Finding, big: Sequence[BigBody]) -> None:
    for how, result in zip(("declared", "chunked"), big, strict=True):
        finding.check(
            result.status == 413 and result.seconds < 2,
            f"{how} huge body answered {result.status or 'nothing'} in {result.seconds:.1f} s",
        )
        finding.check(
            result.peak_growth_mb < RSS_GROWTH_MB,
            f"{how} huge body grew the server by {result.peak_growth_mb:.0f} MB",
        )


def _check_heavy(finding: Finding, heavy: Heavy) -> None:
    finding.check(
        heavy.stored == heavy.deliveries,
        f"only {heavy.stored} of {heavy.deliveries} near-limit deliveries quarantined",
    )
    for what, growth in (
        ("storing", heavy.store_growth_mb),
        ("a rebuild", heavy.rebuild_growth_mb),
    ):
        finding.check(
            growth < REBUILD_GROWTH_MB,
            f"{what} over {heavy.deliveries} near-limit deliveries grew the server by "
            f"{growth:.0f} MB",
        )


def _check_named(finding: Finding, named: Sequence[tuple[Named, Answer]]) -> None:
    for case, answer in named:
        finding.check(
            answer.status == case.expect,
            f"{case.name} answered {answer.status or 'nothing'}, not {case.expect}",
        )


def _check_store(finding: Finding, url: str, tally: Tally) -> None:
    """Nothing unverified stored; every acknowledged delivery stored; rows = 200s + 202s."""
    stored = stored_deliveries(url)
    kept = {(d.slug, d.body) for d in stored}
    unverified = sum(1 for key in kept if key not in tally.genuine)
    ids = Counter((d.slug, d.delivery_id) for d in stored if d.delivery_id is not None)
    finding.lost = len(tally.acknowledged - kept)
    finding.duplicated = sum(n - 1 for n in ids.values() if n > 1)
    finding.check(unverified == 0, f"{unverified} stored deliveries the drill never signed")
    finding.check(
        tally.unsigned_stored == 0,
        f"{tally.unsigned_stored} requests not validly signed answered accepted or quarantined",
    )
    finding.check(finding.lost == 0, f"{finding.lost} acknowledged deliveries not stored")
    finding.check(finding.duplicated == 0, f"{finding.duplicated} deliveries stored twice")
    finding.check(
        len(stored) == tally.stored_answers,
        f"{len(stored)} stored but {tally.stored_answers} answered accepted or quarantined",
    )


def _hostile_figures(
    tally: Tally,
    generated: int,
    elapsed: float,
    big: Sequence[BigBody],
    heavy: Heavy,
    slow: Slow,
    flood: Flood,
    named: Sequence[tuple[Named, Answer]],
    rss_after: float,
    size: Size,
) -> str:
    statuses = ", ".join(
        f"{status or 'closed'} x{count:,}" for status, count in sorted(tally.statuses.items())
    )
    declared, chunked = big
    during = max((a.seconds for a in [*slow.during, *slow.health]), default=0.0)
    right = sum(1 for case, answer in named if answer.status == case.expect)
    return (
        f"{generated:,} generated requests in {elapsed:.0f} s ({generated / elapsed:,.0f}/s), "
        f"{tally.api:,} of them to the analyst API; {tally.sent:,} requests in all, answers "
        f"{statuses}; slowest {tally.slowest:.1f} s; {sum(tally.server_errors.values())} 5xx, "
        f"{sum(tally.hangs.values())} hangs, {tally.overloaded} 503 for overload; "
        f"{size.big_body_mb} MB body declared -> {declared.status} in "
        f"{declared.seconds * 1000:.0f} ms, chunked -> {chunked.status} in "
        f"{chunked.seconds * 1000:.0f} ms after {chunked.sent_mb:.0f} MB, server peak "
        f"+{max(declared.peak_growth_mb, chunked.peak_growth_mb):.0f} MB; "
        f"{heavy.deliveries} verified 1 MB deliveries stored (server peak "
        f"+{heavy.store_growth_mb:.0f} MB) and every view rebuilt over them in "
        f"{heavy.rebuild_seconds:.1f} s (peak +{heavy.rebuild_growth_mb:.0f} MB); "
        f"{len(slow.drips)} idle and slow clients (cap {CAP} connections) let go within "
        f"{slowest(slow, 'idle', 'headers')} (idle or slow headers), "
        f"{slowest(slow, 'unsigned', 'wrong token')} (refused from the headers), "
        f"{slowest(slow, 'body')} (body) and {slowest(slow, 'stall')} (no body), deliveries and "
        f"health checks meanwhile answered within {during * 1000:.0f} ms; "
        f"{flood.bodies} unverified 1 MB bodies held open: {flood.dropped} dropped to make "
        f"room, server peak +{flood.peak_growth_mb:.0f} MB (bound {UNVERIFIED_MB} MiB), a "
        f"delivery meanwhile {flood.delivery.status} in {flood.delivery.seconds * 1000:.0f} ms; "
        f"named cases {right}/{len(named)} as DESIGN says; "
        f"{tally.stored_answers:,} stored = accepted + quarantined answers; "
        f"server RSS {declared.rss_before_mb:.0f} MB before, {rss_after:.0f} MB after"
    )
