"""The stored form of a delivery: what is kept of each verified delivery, its one codec, and the
key that makes a delivery sent twice the same delivery.

The raw delivery is the fact (DESIGN.md): its exact bytes, the headers kept, how it was verified
and what intake read from it on arrival. Whoever writes or reads a stored delivery (the event
store, the projections, the history of an attendee, the test tooling) goes through `encode` and
`decode` here, so the stored form has one definition.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid5

import msgspec

_KEY_NAMESPACE: Final = UUID("6f1d2c4e-7a3b-5e8f-9c0d-1b2a3c4d5e6f")


class DeliveryState(msgspec.Struct, frozen=True, kw_only=True):
    """One stored delivery's state: `timestamp` is when rollcall received it."""

    timestamp: datetime
    slug: str
    body: bytes
    headers: dict[str, str]
    verified_by: str
    delivery_id: str | None
    event_type: str | None
    attendee_id: str | None
    occurred_at: datetime | None
    parser_version: int
    quarantine_reason: str | None
    # Set on a delivery appended by `rollcall replay`: the quarantined original it re-reads.
    replay_of: UUID | None = None
    # The body encrypted under its attendee's data key (nonce + AES-256-GCM ciphertext); `body`
    # then holds only its skeleton (no personal data). None: `body` is the whole body, either
    # stored before encryption existed or kept as a skeleton only (an erased attendee's).
    sealed: bytes | None = None


class StoredBody(msgspec.Struct, frozen=True):
    """The part of a stored delivery the views read: decoding it skips the headers and intake's
    reading, which cost the folds twice as much decoding as they need."""

    timestamp: datetime
    slug: str
    body: bytes
    quarantine_reason: str | None
    verified_by: str = ""
    attendee_id: str | None = None
    sealed: bytes | None = None


# JSON: readable with SQL too (`convert_from(state, 'UTF8')::jsonb`); bytes go as base64.
_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(DeliveryState)
_body_decoder: Final = msgspec.json.Decoder(StoredBody)


def encode(state: DeliveryState | Mapping[str, Any]) -> bytes:
    """The stored bytes of a delivery's state (a DeliveryState, or a mapping of its fields)."""
    return _encoder.encode(state)


def decode(data: bytes) -> DeliveryState:
    """A delivery's state from its stored bytes."""
    return _decoder.decode(data)


def decode_body(data: bytes) -> StoredBody:
    """The part of a delivery's state the views read, from its stored bytes."""
    return _body_decoder.decode(data)


def delivery_key(slug: str, delivery_id: str | None, body: bytes, secret: bytes) -> UUID:
    """The dedupe key: from JTE's delivery id when there is one, else from the exact body,
    through an HMAC keyed by `secret`: a bare hash of a body would let whoever reads the store
    confirm a guessed body (a person's registration) offline."""
    if delivery_id is not None:
        return uuid5(_KEY_NAMESPACE, f"{slug}\nid\n{delivery_id}")
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return uuid5(_KEY_NAMESPACE, f"{slug}\nhmac\n{digest}")


def legacy_delivery_key(slug: str, body: bytes) -> UUID:
    """The key an id-less delivery got before keys were keyed: a retry of one stored then is
    looked up under it, so it stays a duplicate."""
    return uuid5(_KEY_NAMESPACE, f"{slug}\nsha256\n{hashlib.sha256(body).hexdigest()}")
