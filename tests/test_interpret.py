"""Interpretation of raw bodies: the tolerant envelope, exact decimals, and never an exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.interpret import EVENT_TYPES, Interpreted, Unreadable, interpret, parse_time

CANONICAL = b"""{
  "event": "AttendeePaymentConfirmed",
  "id": "4b1e0c7e-delivery-id",
  "occurredAt": "2026-05-14T09:12:03Z",
  "attendee": {
    "id": "a-1842", "email": "ola@example.com", "firstName": "Ola", "lastName": "Nowak",
    "role": "speaker", "addedByAdmin": false, "ticket": "Early bird", "company": "Acme",
    "payment": {"amount": "349.00", "currency": "PLN", "method": "przelewy24",
                "reference": "P24-99812"},
    "tShirtSize": "M"
  }
}"""


def test_canonical_body_is_read_whole() -> None:
    result = interpret(CANONICAL)
    assert isinstance(result, Interpreted)
    assert result.event_type == "AttendeePaymentConfirmed"
    assert result.attendee_id == "a-1842"
    assert result.delivery_id == "4b1e0c7e-delivery-id"
    assert result.occurred_at == datetime(2026, 5, 14, 9, 12, 3, tzinfo=UTC)
    # Unknown attendee keys are kept, never dropped.
    assert result.attendee["tShirtSize"] == "M"
    assert result.attendee["payment"]["reference"] == "P24-99812"


@pytest.mark.parametrize("type_key", ["event", "eventType", "type"])
@pytest.mark.parametrize("attendee_key", ["attendee", "data"])
def test_envelope_aliases(type_key: str, attendee_key: str) -> None:
    body = json.dumps({type_key: "AttendeeCheckedIn", attendee_key: {"id": "x"}}).encode()
    result = interpret(body)
    assert isinstance(result, Interpreted)
    assert (result.event_type, result.attendee_id) == ("AttendeeCheckedIn", "x")


@pytest.mark.parametrize(
    ("body", "delivery_id", "occurred_at"),
    [
        (
            {"deliveryId": "d-9", "timestamp": 1778749923},
            "d-9",
            datetime(2026, 5, 14, 9, 12, 3, tzinfo=UTC),
        ),
        ({"id": 77, "createdAt": 1778749923000}, "77", datetime(2026, 5, 14, 9, 12, 3, tzinfo=UTC)),
        (
            {"occurredAt": "2026-05-14T11:12:03+02:00"},
            None,
            datetime(2026, 5, 14, 9, 12, 3, tzinfo=UTC),
        ),
        ({"occurredAt": "2026-05-14T09:12:03"}, None, datetime(2026, 5, 14, 9, 12, 3, tzinfo=UTC)),
        ({"occurredAt": "yesterday-ish"}, None, None),
        ({"occurredAt": True}, None, None),
    ],
)
def test_delivery_id_and_occurrence_time(
    body: dict[str, object], delivery_id: str | None, occurred_at: datetime | None
) -> None:
    payload = {"event": "AttendeeUpdated", "attendee": {"id": "a"}, **body}
    result = interpret(json.dumps(payload).encode())
    assert isinstance(result, Interpreted)
    assert result.delivery_id == delivery_id
    assert result.occurred_at == occurred_at


def test_numeric_attendee_id_becomes_text_and_nested_data_is_found() -> None:
    numeric = interpret(b'{"type":"AttendeeDeleted","attendee":{"id":1842}}')
    nested = interpret(b'{"type":"AttendeeDeleted","data":{"attendee":{"id":"g-1"}}}')
    top_level = interpret(b'{"type":"AttendeeDeleted","attendeeId":"t-1","data":{"email":"x"}}')
    assert isinstance(numeric, Interpreted) and numeric.attendee_id == "1842"
    assert isinstance(nested, Interpreted) and nested.attendee_id == "g-1"
    assert isinstance(top_level, Interpreted) and top_level.attendee_id == "t-1"


def test_amounts_are_exact_decimals_whether_strings_or_numbers() -> None:
    body = b'{"event":"AttendeePaymentConfirmed","attendee":{"id":"a","payment":{"amount":349.10}}}'
    result = interpret(body)
    assert isinstance(result, Interpreted)
    amount = result.attendee["payment"]["amount"]
    assert isinstance(amount, Decimal) and amount == Decimal("349.10")
    assert str(amount) == "349.10"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1,2,3]", "not a JSON object"),
        (b"", "not valid JSON"),
        (b'{"event":"AttendeeTeleported","attendee":{"id":"a"}}', "unknown event type"),
        (b'{"event":"attendeeregistered","attendee":{"id":"a"}}', "unknown event type"),
        (b'{"attendee":{"id":"a"}}', "unknown event type"),
        (b'{"event":"AttendeeRegistered"}', "no attendee object"),
        (b'{"event":"AttendeeRegistered","attendee":"a-1"}', "no attendee object"),
        (b'{"event":"AttendeeRegistered","attendee":{"email":"x@y"}}', "no attendee id"),
        (b'{"event":"AttendeeRegistered","attendee":{"id":""}}', "no attendee id"),
        (b'{"event":"AttendeeRegistered","attendee":{"id":true}}', "no attendee id"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_unreadable_bodies_say_why(body: bytes, reason: str) -> None:
    result = interpret(body)
    assert isinstance(result, Unreadable)
    assert reason in result.reason


def test_unreadable_body_still_yields_its_delivery_id() -> None:
    result = interpret(b'{"id":"d-1","event":"Mystery","attendee":{"id":"a"}}')
    assert result == Unreadable(reason="unknown event type: Mystery", delivery_id="d-1")


def test_all_seven_event_types_are_known() -> None:
    for event_type in EVENT_TYPES:
        body = json.dumps({"event": event_type, "attendee": {"id": "a"}}).encode()
        assert isinstance(interpret(body), Interpreted)
    assert len(EVENT_TYPES) == 7


def test_parse_time_is_utc_and_tolerant() -> None:
    assert parse_time("2026-05-14T09:12:03.250Z") == datetime(
        2026, 5, 14, 9, 12, 3, 250000, tzinfo=UTC
    )
    assert parse_time(10**30) is None
    assert parse_time(None) is None
    assert parse_time([1]) is None


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_beyond_the_calendar_in_utc_is_no_time(text: str) -> None:
    # Regression (found by `scripts/drill hostile`): the UTC conversion overflowed, and intake
    # answered a verified delivery 503 while the API answered 500 for `at=`.
    assert parse_time(text) is None
    body = json.dumps({"event": "AttendeeCheckedIn", "occurredAt": text, "attendee": {"id": "a"}})
    reading = interpret(body.encode())
    assert isinstance(reading, Interpreted) and reading.occurred_at is None


@given(st.binary(max_size=300))
def test_interpret_never_raises_on_any_bytes(body: bytes) -> None:
    assert isinstance(interpret(body), Interpreted | Unreadable)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["event", "type", "id", "attendee", "data", "occurredAt", "attendeeId"]),
        json_values | st.sampled_from(sorted(EVENT_TYPES)),
    )
)
def test_interpret_never_raises_on_any_envelope(envelope: dict[str, object]) -> None:
    assert isinstance(interpret(json.dumps(envelope).encode()), Interpreted | Unreadable)


# --- Killed mutants (scripts/mutation.py) ------------------------------------------------------


def test_the_attendee_id_may_come_as_attendee_id() -> None:
    body = json.dumps({"event": "AttendeeCheckedIn", "attendee": {"attendeeId": "a-9"}})
    reading = interpret(body.encode())
    assert isinstance(reading, Interpreted) and reading.attendee_id == "a-9"


def test_unix_seconds_are_an_aware_utc_time() -> None:
    parsed = parse_time(1778749923)
    assert parsed == datetime(2026, 5, 14, 9, 12, 3, tzinfo=UTC)
    assert parsed is not None and parsed.utcoffset() is not None


def test_an_id_of_the_longest_length_is_kept_one_longer_is_not() -> None:
    def attendee_id(length: int) -> str | None:
        body = json.dumps({"event": "AttendeeCheckedIn", "attendee": {"id": "x" * length}})
        reading = interpret(body.encode())
        return reading.attendee_id if isinstance(reading, Interpreted) else None

    assert attendee_id(200) == "x" * 200
    assert attendee_id(201) is None


def test_deliveries_of_the_same_instant_are_ordered_by_key_not_by_arrival() -> None:
    from uuid import UUID

    from domain import roster
    from domain.events import attendee_event

    def reading(last: str) -> Interpreted:
        body = {
            "event": "AttendeeRegistered",
            "occurredAt": "2026-05-14T09:00:00Z",
            "attendee": {"id": "a-1", "lastName": last},
        }
        read = interpret(json.dumps(body).encode())
        assert isinstance(read, Interpreted)
        return read

    received = datetime(2026, 5, 14, 10, tzinfo=UTC)
    low = attendee_event("default", 7, UUID(int=1), received, reading("Low"))
    high = attendee_event("default", 3, UUID(int=2), received, reading("High"))
    assert low.order < high.order
    for arrival in ([low, high], [high, low]):
        assert roster.fold(arrival)[("default", "a-1")].fields["lastName"] == "High"
