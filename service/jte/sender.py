"""Sending signed deliveries to rollcall as JTE does, and reporting what rollcall answered.

post_all() POSTs with a few parallel senders over keep-alive connections (httpx) and JTE's
at-least-once retries: anything not acknowledged is sent again, with backoff, until it gets a
non-5xx answer. summary() puts the Report into a few lines for a person.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from service.config import DEFAULT_SLUG
from service.jte.simulator import Expect, SignedDelivery

_USER_AGENT: Final = "rollcall-simulate/1"
_BACKOFF_FIRST: Final = 0.1
_BACKOFF_MAX: Final = 5.0
# Failed before any byte of the request left: such an attempt cannot have been stored.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failed later (no answer, or half an answer): the delivery may have been stored.
_LOST: Final = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_STORED: Final = ("accepted", "duplicate")


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What rollcall finally answered one delivery: `answer` is the body's status or error."""

    delivery_id: str
    expect: Expect
    answer: str  # accepted, duplicate, quarantined, unauthorized, another error, or "no answer"
    http_status: int | None
    position: int | None
    attempts: int
    # An earlier attempt was sent but its answer lost: rollcall may have stored that one.
    uncertain: bool


class Acknowledged(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery answered 2xx, in the order the answers came."""

    delivery_id: str
    http_status: int
    position: int | None


class Report(msgspec.Struct, kw_only=True):
    """What post_all() saw: final answers per HTTP status and per body status, retries, timing."""

    sent: int
    elapsed: float
    retries: int
    http_statuses: dict[int, int]
    statuses: dict[str, int]
    no_answer: int
    unexpected: int
    acknowledged: list[Acknowledged]
    outcomes: list[Outcome]

    @property
    def per_second(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


class _Answer(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    retry_after: float | None


class _Reply(msgspec.Struct, frozen=True):
    status: str | None = None
    position: int | None = None
    error: str | None = None


class _Policy:
    """How a sender retries, and when the whole run stops retrying: after `give_up_after`
    seconds in which the server answered nothing at all."""

    def __init__(self, *, retry: bool, give_up_after: float | None) -> None:
        self.retry = retry
        self.give_up_after = give_up_after
        self.last_answer = time.monotonic()

    def answered(self) -> None:
        self.last_answer = time.monotonic()

    def should_retry(self, answer: _Answer | None) -> bool:
        if not self.retry or (answer is not None and answer.status < 500):
            return False
        silent = time.monotonic() - self.last_answer
        return self.give_up_after is None or silent <= self.give_up_after


async def post_all(
    url: str,
    deliveries: Sequence[SignedDelivery],
    *,
    concurrency: int,
    retry: bool = True,
    timeout: float = 30,  # noqa: ASYNC109 - passed to httpx: per step of an attempt
    give_up_after: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Report:
    """POST each delivery to `url` (base URL; path /webhooks/jte for slug "default", else
    /webhooks/jte/<slug>) with `concurrency` parallel senders, like JTE: when retry is True,
    anything not acknowledged (connection error, timeout, 5xx incl. 503) is retried with
    backoff until it gets a non-5xx answer. `timeout` bounds each step of an attempt
    (connecting, sending, every wait for answer bytes). With `give_up_after`, retrying stops
    once the server has answered nothing for that many seconds. Returns a Report."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    base_url = _base_url(url)
    policy = _Policy(retry=retry, give_up_after=give_up_after)
    # One shared iterator: each delivery is taken by exactly one sender.
    pending = iter(enumerate(deliveries))
    outcomes: list[Outcome | None] = [None] * len(deliveries)
    acknowledged: list[Acknowledged] = []
    answered = [0]  # deliveries with a final outcome, for on_progress

    async def sender() -> None:
        # A client (one keep-alive connection) per sender: httpx's shared pool costs several
        # times the CPU at high concurrency, and JTE's workers are separate clients anyway.
        async with _client(base_url, timeout) as client:
            for index, delivery in pending:
                await send_one(client, index, delivery)

    async def send_one(client: httpx.AsyncClient, index: int, delivery: SignedDelivery) -> None:
        outcome = await _deliver(client, delivery, policy)
        outcomes[index] = outcome
        if on_progress is not None:
            answered[0] += 1
            on_progress(answered[0], len(deliveries))
        if outcome.http_status is not None and 200 <= outcome.http_status < 300:
            acknowledged.append(
                Acknowledged(
                    delivery_id=outcome.delivery_id,
                    http_status=outcome.http_status,
                    position=outcome.position,
                )
            )

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, max(1, len(deliveries)))):
            group.create_task(sender())
    elapsed = time.monotonic() - started
    return _report([o for o in outcomes if o is not None], acknowledged, elapsed)


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _client(base_url: str, timeout: float) -> httpx.AsyncClient:
    """One keep-alive connection, straight to the URL (no proxy from the environment),
    trusting the system's certificate authorities."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"user-agent": _USER_AGENT},
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=httpx.Timeout(timeout),
        verify=ssl.create_default_context(),
        trust_env=False,
    )


def _path(slug: str) -> str:
    return "/webhooks/jte" if slug == DEFAULT_SLUG else f"/webhooks/jte/{slug}"


async def _deliver(client: httpx.AsyncClient, delivery: SignedDelivery, policy: _Policy) -> Outcome:
    path = _path(delivery.slug)
    body = delivery.body.encode()
    # sign() made the values so that their latin-1 bytes are the UTF-8 bytes JTE would send.
    headers = [(name.encode(), value.encode("latin-1")) for name, value in delivery.headers.items()]
    attempts = 0
    uncertain = False
    while True:
        attempts += 1
        answer: _Answer | None = None
        try:
            answer = await _post(client, path, body, headers)
            policy.answered()
        except _NOT_SENT:
            pass
        except _LOST:
            uncertain = True
        if not policy.should_retry(answer):
            return _outcome(delivery, answer, attempts, uncertain)
        await asyncio.sleep(_backoff(attempts, answer))


async def _post(
    client: httpx.AsyncClient, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> _Answer:
    response = await client.post(path, content=body, headers=headers)
    return _Answer(response.status_code, response.content, _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


def _backoff(attempts: int, answer: _Answer | None) -> float:
    delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2.0 ** (attempts - 1))
    if answer is not None and answer.retry_after is not None:
        delay = max(delay, min(answer.retry_after, _BACKOFF_MAX))
    return delay


def _outcome(
    delivery: SignedDelivery, answer: _Answer | None, attempts: int, uncertain: bool
) -> Outcome:
    if answer is None:
        text, status, position = "no answer", None, None
    else:
        try:
            reply = msgspec.json.decode(answer.body, type=_Reply)
        except msgspec.DecodeError:  # ValidationError is a DecodeError
            reply = _Reply()
        status, position = answer.status, reply.position
        text = (reply.status if status < 300 else reply.error) or f"http {status}"
    return Outcome(
        delivery_id=delivery.delivery_id,
        expect=delivery.expect,
        answer=text,
        http_status=status,
        position=position,
        attempts=attempts,
        uncertain=uncertain,
    )


def _report(outcomes: list[Outcome], acknowledged: list[Acknowledged], elapsed: float) -> Report:
    http_statuses = Counter(o.http_status for o in outcomes if o.http_status is not None)
    statuses = Counter(
        o.answer for o in outcomes if o.http_status is not None and 200 <= o.http_status < 300
    )
    return Report(
        sent=len(outcomes),
        elapsed=elapsed,
        retries=sum(o.attempts - 1 for o in outcomes),
        http_statuses=dict(sorted(http_statuses.items())),
        statuses=dict(sorted(statuses.items())),
        no_answer=sum(o.http_status is None for o in outcomes),
        unexpected=_unexpected(outcomes),
        acknowledged=acknowledged,
        outcomes=outcomes,
    )


def _unexpected(outcomes: Sequence[Outcome]) -> int:
    """Answers that differ from `expect`, where concurrency may swap accepted and duplicate
    between sends of one delivery id, but each such id must be accepted exactly once."""
    mismatches = sum(not _matches(o) for o in outcomes)
    sends: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.expect in _STORED:
            sends[outcome.delivery_id].append(outcome)
    for group in sends.values():
        if not all(o.answer in _STORED for o in group):
            continue  # already counted as a mismatch
        accepted = sum(o.answer == "accepted" for o in group)
        # A lost answer may have been the acceptance, then every answer seen is "duplicate".
        if accepted > 1 or (accepted == 0 and not any(o.uncertain for o in group)):
            mismatches += 1
    return mismatches


def _matches(outcome: Outcome) -> bool:
    if outcome.expect in _STORED:
        return outcome.answer in _STORED
    if outcome.expect == "quarantined" and outcome.uncertain and outcome.answer == "duplicate":
        return True
    return outcome.answer == outcome.expect


def summary(report: Report) -> str:
    """A few lines for a person: how many, what came back, how fast, what was unexpected."""
    statuses = ", ".join(f"{code}: {n}" for code, n in report.http_statuses.items()) or "none"
    bodies = ", ".join(f"{name} {n}" for name, n in report.statuses.items()) or "none"
    lines = [
        f"sent {report.sent} deliveries in {report.elapsed:.2f} s "
        f"({report.per_second:.0f}/s), {report.retries} retries",
        f"HTTP {statuses}; no answer: {report.no_answer}",
        f"acknowledged: {bodies}",
        f"unexpected answers: {report.unexpected}",
    ]
    return "\n".join(lines)
