"""The stored form's identity and codec: the delivery key is stable across releases (a retry
sent after an upgrade must still be a duplicate), and the codec round-trips every field."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from domain.deliveries import (
    DeliveryState,
    decode,
    decode_body,
    delivery_key,
    encode,
    legacy_delivery_key,
)

KEY = b"k" * 32  # the HMAC secret of id-less deliveries' keys


def test_delivery_keys_are_the_ones_earlier_releases_stored() -> None:
    # Golden values: changing how a key is made would store every retry after an upgrade twice.
    assert delivery_key("default", "d-1", b"{}", KEY) == UUID(
        "6b2b22fb-f702-5321-8331-001395be1f90"
    )
    assert delivery_key("other", "d-1", b"{}", KEY) == UUID("405a5c7d-394d-5e34-a649-88978db9ec8e")
    # Id-less deliveries stored before keys were keyed are found under their old key.
    assert legacy_delivery_key("default", b'{"a":1}') == UUID(
        "30e8d14b-a7e2-50d7-92ef-b1d8bdc5fb9c"
    )
    assert delivery_key("default", None, b'{"a":1}', KEY) == UUID(
        "86fd3295-ee26-5b61-9d80-f961cb4174c2"
    )


def test_the_key_is_the_id_when_there_is_one_else_the_exact_body_under_a_secret() -> None:
    assert delivery_key("default", "d-1", b"one", KEY) == delivery_key(
        "default", "d-1", b"two", KEY
    )
    assert delivery_key("default", None, b"one", KEY) != delivery_key("default", None, b"two", KEY)
    assert delivery_key("default", None, b"one", KEY) == delivery_key("default", None, b"one", KEY)
    assert delivery_key("a", "d-1", b"x", KEY) != delivery_key("b", "d-1", b"x", KEY)
    assert delivery_key("a", None, b"x", KEY) != delivery_key("b", None, b"x", KEY)
    # Without the secret, a body's key cannot be computed from a guessed body.
    assert delivery_key("a", None, b"x", KEY) != delivery_key("a", None, b"x", b"other" * 8)
    assert delivery_key("a", None, b"x", KEY) != legacy_delivery_key("a", b"x")
    # An id that happens to spell a body hash is not that body's key.
    digest = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"  # sha256("x")
    assert delivery_key("a", digest, b"", KEY) != delivery_key("a", None, b"x", KEY)


def test_the_codec_round_trips_every_field() -> None:
    state = DeliveryState(
        timestamp=datetime(2026, 5, 14, 9, 12, 3, 123456, tzinfo=UTC),
        slug="default",
        body=b'{"event":"AttendeeRegistered","attendee":{"id":"a-1"}}\x00\xff',
        headers={"content-type": "application/json"},
        verified_by="hmac-sha256",
        delivery_id="d-1",
        event_type="AttendeeRegistered",
        attendee_id="a-1",
        occurred_at=datetime(2026, 5, 14, 9, tzinfo=UTC),
        parser_version=3,
        quarantine_reason=None,
    )
    data = encode(state)
    assert decode(data) == state
    body = decode_body(data)
    assert (body.timestamp, body.slug, body.body, body.quarantine_reason) == (
        state.timestamp,
        state.slug,
        state.body,
        None,
    )
