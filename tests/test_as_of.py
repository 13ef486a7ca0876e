"""Point in time by occurrence time: every `as_of=T` answer of one service equals what a second
service answers when it was sent only the deliveries that had occurred by T (a full fold cut at
T), for random cut points, each service's deliveries in a random order."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import RunningService, api_token, bearer, make_settings, token_headers

DAY = datetime(2026, 5, 14, 7, tzinfo=UTC)
FAR = "2100-01-01T00:00:00Z"


class Delivery:
    def __init__(self, body: dict[str, Any], at: datetime | None) -> None:
        self.at = at
        if at is not None:
            body["occurredAt"] = at.isoformat().replace("+00:00", "Z")
        self.bytes = json.dumps(body).encode()


def day(rng: random.Random) -> list[Delivery]:
    """A conference day of 14 attendees: registrations, renames, deletions and returns, check-ins
    and outs with repeats and strays, payments confirmed again under one reference, one payment
    the ledger cannot record, and a few deliveries without an occurrence time."""
    n = iter(range(10_000))
    out: list[Delivery] = []

    def send(event: str, attendee: dict[str, Any], at: datetime | None) -> None:
        out.append(Delivery({"event": event, "id": f"d{next(n)}", "attendee": attendee}, at))

    def when(start: int, end: int) -> datetime:
        return DAY + timedelta(minutes=rng.randrange(start, end))

    for i in range(14):
        person = f"a-{i}"
        registered = when(0, 120)
        names = {"firstName": rng.choice(["Anna", "Jan", "Ola"]), "lastName": f"N{i % 5}"}
        send("AttendeeRegistered", {"id": person, **names, "diet": rng.choice(["v", "m"])},
             registered)  # fmt: skip
        if rng.random() < 0.4:
            send("AttendeeUpdated", {"id": person, "lastName": f"M{i}"}, when(120, 500))
        if rng.random() < 0.2:
            send("AttendeeDeleted", {"id": person}, when(200, 400))
            if rng.random() < 0.5:
                send("AttendeeImported", {"id": person, "lastName": "Back"}, when(400, 600))
        moment = when(130, 300)
        for _ in range(rng.randrange(0, 4)):
            kind = rng.choice(["AttendeeCheckedIn", "AttendeeCheckedIn", "AttendeeCheckedOut"])
            send(kind, {"id": person}, moment)
            moment += timedelta(minutes=rng.randrange(1, 90))
        if rng.random() < 0.5:
            reference = f"R{i}" if rng.random() < 0.7 else None
            for amount in ["100.00", "120.50"] if reference and rng.random() < 0.5 else ["80"]:
                payment = {"amount": amount, "currency": rng.choice(["PLN", "EUR"]),
                           "method": "payu", "reference": reference}  # fmt: skip
                send("AttendeePaymentConfirmed", {"id": person, "payment": payment},
                     when(60, 600))  # fmt: skip
    send("AttendeePaymentConfirmed", {"id": "a-1", "payment": {"amount": "x"}}, when(60, 600))
    send("AttendeeCheckedIn", {"id": "late-1", "firstName": "Walk"}, None)
    send("AttendeeUpdated", {"id": "a-2", "lastName": "Received"}, None)
    return out


async def post_all(url: str, deliveries: list[Delivery], rng: random.Random) -> None:
    shuffled = deliveries[:]
    rng.shuffle(shuffled)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for delivery in shuffled:
            answer = await client.post("/webhooks/jte", content=delivery.bytes,
                                       headers=token_headers())  # fmt: skip
            assert answer.status_code == 200, answer.text


PATHS = (
    "roster?status=all&limit=1000",
    "roster?limit=3",
    "roster?status=all&format=csv&dialect=excel",
    "roster?status=all&format=csv",
    "roster?checked_in=true&paid=true",
    "roster?status=deleted",
    "roster?q=Anna&status=all",
    "roster?q=N1",
    "payments?limit=1000",
    "payments?format=csv",
    "payments/summary",
    "occupancy",
)


async def answers(client: httpx.AsyncClient, as_of: str | None, ids: list[str]) -> dict[str, Any]:
    """Every answer the comparison covers, from a service now (as_of None) or as of a time."""
    result: dict[str, Any] = {}
    suffix = "" if as_of is None else f"as_of={as_of}"
    for path in [*PATHS, *(f"attendees/{i}" for i in ids)]:
        joined = path + (("&" if "?" in path else "?") + suffix if suffix else "")
        answer = await client.get(f"/v1/events/default/{joined}")
        if path.startswith("attendees/") and answer.status_code == 404:
            result[path] = None
            continue
        assert answer.status_code == 200, (joined, answer.text)
        if "format=csv" in path:
            result[path] = answer.content
            continue
        body = answer.json()
        if path == "occupancy":
            body.pop("at")
        if path.startswith("attendees/"):
            # Positions and receipt times are the store's own: the deliveries' types and
            # occurrence times say which were counted.
            body["history"] = sorted(
                (h["event_type"], h["occurred_at"] or "received") for h in body["history"]
            )
        result[path] = body
    return result


async def test_as_of_equals_a_fold_cut_at_that_moment(
    start_service: Callable[..., RunningService],
    database_url: str,
    new_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    rng = random.Random(20260514)
    deliveries = day(rng)
    full = start_service()
    await post_all(full.url, deliveries, rng)
    wait_until_caught_up(database_url)
    ids = sorted({json.loads(d.bytes)["attendee"]["id"] for d in deliveries})
    timed = sorted({d.at for d in deliveries if d.at is not None})
    # Random moments of the day, and the instant of a delivery (a cut includes it).
    cuts = sorted({DAY + timedelta(minutes=rng.uniform(0, 660)) for _ in range(3)})
    cuts.append(rng.choice(timed))
    async with httpx.AsyncClient(base_url=full.url, timeout=30) as client:
        client.headers.update(bearer(api_token(database_url)))
        for n, cut in enumerate(cuts):
            url = new_database()
            settings = make_settings(url, tmp_path / f"cut{n}")
            cut_service = RunningService(settings)
            cut_service.start()
            try:
                kept = [d for d in deliveries if d.at is not None and d.at <= cut]
                assert 0 < len(kept) < len(deliveries)
                await post_all(cut_service.url, kept, rng)
                wait_until_caught_up(url)
                async with httpx.AsyncClient(base_url=cut_service.url, timeout=30) as other:
                    other.headers.update(bearer(api_token(url)))
                    expected = await answers(other, None, ids)
            finally:
                cut_service.stop()
            stamp = cut.isoformat().replace("+00:00", "Z")
            got = await answers(client, stamp, ids)
            for path in expected:
                assert got[path] == expected[path], (stamp, path)
        # Far ahead, every delivery counts, the untimed ones by their receipt time: as now.
        assert await answers(client, FAR, ids) == await answers(client, None, ids)
        before = (
            await client.get("/v1/events/default/roster?status=all&as_of=2026-05-14T06:00:00Z")
        ).json()
        assert before["items"] == []
        bad = await client.get("/v1/events/default/roster?as_of=noon")
        assert bad.status_code == 400 and "as_of" in bad.json()["message"]
