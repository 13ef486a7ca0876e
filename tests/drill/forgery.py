"""The forgery scenario (`scripts/drill forgery`): replays inside and outside the Standard
Webhooks window, bodies altered by a byte, forged tokens and HMACs, and a secret rotated
without a restart. Nothing forged may be stored; no genuine delivery may fail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Final

import httpx
import msgspec

from service.config import EventConfig
from service.jte.signing import sign
from service.jte.simulator import SimulatedDelivery
from tests.drill.access import scan_logs
from tests.drill.fuzz import TOLERANCE
from tests.drill.harness import Workspace, fresh_deliveries, stored_deliveries, wait_for
from tests.drill.hostile import SEED
from tests.drill.report import Finding, Size, top
from tests.drill.wire import Headers, webhook_path, wire_headers

ROTATION_SECONDS: Final = 5.0  # how long a removed secret may still work


# --- The forgery scenario -------------------------------------------------------------------


class Book:
    """The forgery scenario's ledger: what was accepted, what was refused, what went wrong."""

    def __init__(self) -> None:
        self.accepted: dict[str, bytes] = {}  # delivery id -> body, answered 200 accepted
        self.refused = 0  # forged, replayed or signed with a retired secret: 401
        self.wrong: Counter[str] = Counter()  # "case answered status"
        self.sent = 0

    def answered(self, delivery: SimulatedDelivery, body: bytes, response: httpx.Response) -> None:
        self.sent += 1
        if response.status_code == 200 and '"accepted"' in response.text:
            self.accepted[delivery.delivery_id] = body
        elif response.status_code == 401:
            self.refused += 1

    def expect(self, case: str, response: httpx.Response, status: int, word: str = "") -> None:
        if response.status_code != status or word not in response.text:
            self.wrong[f"{case} answered {response.status_code}"] += 1


def forgery(ws: Workspace, size: Size) -> Finding:
    """Replays, altered bodies, forged tokens and HMACs, and a secret rotation without a
    restart; nothing forged may be stored."""
    with ws.database("forgery") as url:
        server = ws.serve("forgery", url).start()
        book = Book()
        fresh = iter(fresh_deliveries(SEED + 11, 1200 + 3 * size.forgery_rounds))
        with httpx.Client(base_url=server.url, timeout=10) as client:
            sender = Sender(client, book, fresh)
            for _ in range(size.forgery_rounds):
                replays(sender, ws.standard)
                forged_tokens(sender, ws.default)
            try:
                rotation = rotate(sender, ws, size.within(ROTATION_SECONDS))
            finally:
                restored = restore(sender, ws)
        finding = Finding(
            scenario="forgery",
            load=f"{len(book.accepted):,} genuine deliveries",
            faults=f"{book.refused:,} forged or replayed, 1 secret rotation",
            bad_inputs=book.refused,
        )
        _check_forgery(finding, url, book, rotation, restored, size.within(ROTATION_SECONDS))
        scan_logs(finding, ws, [server.log])
        server.stop()
        finding.figures = (
            f"{book.sent:,} requests; {size.forgery_rounds} rounds of replays (inside and "
            f"outside the {TOLERANCE} s window), one-byte changes, swapped ids and timestamps, "
            f"and 26 forged tokens/HMACs: {book.refused:,} answered 401; rotation without a "
            f"restart: new secret accepted {rotation.added:.1f} s after it was added, old one "
            f"refused {rotation.removed:.1f} s after it was removed, "
            f"{rotation.failed} genuine deliveries failed meanwhile"
        )
        return finding


class Sender:
    """POSTs deliveries to the forgery scenario's server and books every answer."""

    def __init__(
        self, client: httpx.Client, book: Book, fresh: Iterator[SimulatedDelivery]
    ) -> None:
        self.client = client
        self.book = book
        self.fresh = fresh

    def next(self) -> SimulatedDelivery:
        return next(self.fresh)

    def post(
        self,
        event: EventConfig,
        delivery: SimulatedDelivery,
        headers: Headers,
        body: bytes | None = None,
    ) -> httpx.Response:
        content = delivery.body if body is None else body
        response = self.client.post(
            webhook_path(event.slug).decode(), content=content, headers=httpx.Headers(headers)
        )
        self.book.answered(delivery, content, response)
        return response

    def signed(
        self, event: EventConfig, delivery: SimulatedDelivery, now: float, secret: str | None = None
    ) -> Headers:
        values = sign(
            event, delivery.body, now=now, secret=secret, delivery_id=delivery.delivery_id
        )
        return wire_headers(values)


def replays(sender: Sender, event: EventConfig) -> None:
    """A genuine delivery and its replays: within the window a duplicate; outside it, or
    altered in any way, 401."""
    book, genuine, forged, now = sender.book, sender.next(), sender.next(), time.time()
    headers = sender.signed(event, genuine, now)
    book.expect("genuine", sender.post(event, genuine, headers), 200, '"accepted"')
    book.expect("resent within the window", sender.post(event, genuine, headers), 200, "duplicate")
    for case, when in (("signed 400 s ago", now - 400), ("signed 400 s ahead", now + 400)):
        book.expect(case, sender.post(event, forged, sender.signed(event, forged, when)), 401)
    stale = dict(sender.signed(event, forged, now - 400))
    stale[b"webhook-timestamp"] = str(int(now)).encode()
    book.expect("old signature, new timestamp", sender.post(event, forged, [*stale.items()]), 401)
    renamed = dict(headers)
    renamed[b"webhook-id"] = forged.delivery_id.encode()
    book.expect("another webhook-id", sender.post(event, genuine, [*renamed.items()]), 401)
    for position in (0, len(genuine.body) // 2, len(genuine.body) - 1):
        altered = bytearray(genuine.body)
        altered[position] ^= 0x01
        response = sender.post(event, genuine, headers, bytes(altered))
        book.expect("one byte changed", response, 401)


def forged_tokens(sender: Sender, event: EventConfig) -> None:
    """The default event's secret guessed, cut, padded, or used the wrong way: all 401."""
    delivery = sender.next()
    secret = event.secrets[0].encode()
    for case, forged in _forged_headers(delivery.body, secret):
        headers = [(b"Content-Type", b"application/json"), *forged]
        sender.book.expect(case, sender.post(event, delivery, headers), 401)


def _forged_headers(body: bytes, secret: bytes) -> list[tuple[str, Headers]]:
    def mac(key: bytes, message: bytes = body, algorithm: str = "sha256") -> bytes:
        return hmac.new(key, message, algorithm).hexdigest().encode()

    token, bearer, signature = b"X-Webhook-Secret", b"Authorization", b"X-Webhook-Signature"
    wrong = secrets.token_urlsafe(32).encode()
    plain = hashlib.sha256(secret + body).hexdigest().encode()
    return [
        ("wrong token", [(token, wrong)]),
        ("token with a suffix", [(token, secret + b"x")]),
        ("token with a prefix", [(token, b"x" + secret)]),
        ("token cut short", [(token, secret[:-1])]),
        ("token without its first byte", [(token, secret[1:])]),
        ("token twice over", [(token, secret + secret)]),
        ("token in another case", [(token, secret.swapcase())]),
        ("empty token", [(token, b"")]),
        ("wrong bearer", [(bearer, b"Bearer " + wrong)]),
        ("bearer cut short", [(bearer, b"Bearer " + secret[:-1])]),
        ("basic auth", [(bearer, b"Basic " + base64.b64encode(b":" + secret))]),
        ("empty bearer", [(bearer, b"Bearer")]),
        ("HMAC with a wrong key", [(signature, b"sha256=" + mac(wrong))]),
        ("HMAC with the key suffixed", [(signature, b"sha256=" + mac(secret + b"x"))]),
        ("HMAC with the key prefixed", [(signature, b"sha256=" + mac(b"x" + secret))]),
        ("HMAC with the key cut short", [(signature, mac(secret[:-1]))]),
        ("HMAC with an empty key", [(signature, mac(b""))]),
        ("SHA-256 of secret and body", [(signature, plain)]),
        ("SHA-256 of the body", [(signature, hashlib.sha256(body).hexdigest().encode())]),
        ("HMAC of another body", [(signature, mac(secret, body + b" "))]),
        ("HMAC cut short", [(signature, mac(secret)[:-1])]),
        ("HMAC half", [(signature, mac(secret)[:32])]),
        ("empty signature", [(signature, b"sha256=")]),
        ("HMAC-SHA1", [(signature, b"sha1=" + mac(secret, algorithm="sha1"))]),
        ("HMAC-SHA512", [(signature, mac(secret, algorithm="sha512"))]),
        ("the secret as the signature", [(signature, b"sha256=" + secret)]),
    ]


class Rotation(msgspec.Struct, frozen=True, kw_only=True):
    added: float  # seconds until a newly added secret was accepted
    removed: float  # seconds until a removed secret was refused
    stable: bool  # once refused, the removed secret stayed refused
    failed: int  # genuine deliveries (signed with a secret then in force) not accepted


def rotate(sender: Sender, ws: Workspace, bound: float) -> Rotation:
    """Add a new secret next to the old one, then remove the old one, by rewriting the
    configuration of the running server; deliveries keep flowing with both secrets. Each
    change is waited for well past `bound`, so that a late one is measured."""
    event, old = ws.standard, ws.standard.secrets[0]
    new = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    ws.write_config((old, new))
    added, failed = _until(sender, event, steady=old, probe=new, wanted=200, within=bound + 5)
    for secret in (old, new) * 5:
        failed += _send_with(sender, event, secret) != 200
    ws.write_config((new,))
    removed, failures = _until(sender, event, steady=new, probe=old, wanted=401, within=bound + 5)
    failed += failures
    stable = all(_send_with(sender, event, old) == 401 for _ in range(10))
    failed += sum(_send_with(sender, event, new) != 200 for _ in range(10))
    return Rotation(added=added, removed=removed, stable=stable, failed=failed)


def _until(
    sender: Sender, event: EventConfig, *, steady: str, probe: str, wanted: int, within: float
) -> tuple[float, int]:
    """Seconds until a delivery signed with `probe` gets `wanted` (inf: not `within` seconds),
    while deliveries signed with `steady` must keep getting 200; and how many did not."""
    started, failed = time.monotonic(), 0
    while time.monotonic() - started < within:
        failed += _send_with(sender, event, steady) != 200
        if _send_with(sender, event, probe) == wanted:
            return time.monotonic() - started, failed
        time.sleep(0.05)
    return float("inf"), failed


def _send_with(sender: Sender, event: EventConfig, secret: str) -> int:
    """Send a fresh delivery signed now with `secret`; the answer's status."""
    delivery = sender.next()
    response = sender.post(event, delivery, sender.signed(event, delivery, time.time(), secret))
    return response.status_code


def restore(sender: Sender, ws: Workspace) -> bool:
    """Put the workspace's own secret back (other scenarios sign with it); True once it works."""
    ws.write_config(ws.standard.secrets)
    old = ws.standard.secrets[0]
    return wait_for(lambda: _send_with(sender, ws.standard, old) == 200, 60, 0.1) is not None


def _check_forgery(
    finding: Finding, url: str, book: Book, rotation: Rotation, restored: bool, bound: float
) -> None:
    stored = stored_deliveries(url)
    ids = Counter(d.delivery_id for d in stored)
    # Anything stored must be a delivery answered 200 accepted, byte for byte.
    unexpected = sum(
        1 for d in stored if d.delivery_id is None or book.accepted.get(d.delivery_id) != d.body
    )
    finding.lost = sum(1 for d in book.accepted if ids[d] == 0)
    finding.duplicated = sum(n - 1 for n in ids.values() if n > 1)
    wrong = sum(book.wrong.values())
    finding.check(unexpected == 0, f"{unexpected} forged, replayed or unacknowledged stored")
    finding.check(finding.lost == 0, f"{finding.lost} accepted deliveries not stored")
    finding.check(finding.duplicated == 0, f"{finding.duplicated} stored twice")
    finding.check(wrong == 0, f"{wrong} answers not as DESIGN says ({top(book.wrong)})")
    finding.check(rotation.added <= bound, f"new secret accepted only after {rotation.added:.1f} s")
    finding.check(
        rotation.removed <= bound,
        f"old secret still accepted {rotation.removed:.1f} s after its removal",
    )
    finding.check(rotation.stable, "the removed secret was accepted again")
    finding.check(rotation.failed == 0, f"{rotation.failed} genuine deliveries failed in rotation")
    finding.check(restored, "the workspace's secret did not work again after restoring it")
