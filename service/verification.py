"""Verification of a delivery against a JTE event's secrets: token, HMAC-SHA256, Standard Webhooks.

Every comparison is constant-time, every active secret is tried, and no message names a
secret or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

import msgspec

from service.config import EventConfig

_SHA256_PREFIX: Final = b"sha256="


class Verified(msgspec.Struct, frozen=True):
    """The delivery carries a valid secret; `method` says which check matched."""

    method: str


class Rejected(msgspec.Struct, frozen=True):
    """The delivery is not authentic; `reason` is safe to show to the sender."""

    reason: str


Headers = Mapping[str, bytes]


def verify(event: EventConfig, headers: Headers, body: bytes, now: float) -> Verified | Rejected:
    """Check a delivery's headers and exact body against the event's configured mode."""
    keys = [secret.encode() for secret in event.secrets]
    if event.mode == "token":
        return _verify_token(event, headers, keys)
    if event.mode == "hmac-sha256":
        return _verify_hmac(event, headers, body, keys, now)
    if event.mode == "standard-webhooks":
        return _verify_standard(event, headers, body, now)
    return _verify_token_or_hmac(event, headers, body, keys, now)


def _verify_token_or_hmac(
    event: EventConfig, headers: Headers, body: bytes, keys: list[bytes], now: float
) -> Verified | Rejected:
    if _presented_tokens(event, headers):
        token = _verify_token(event, headers, keys)
        if isinstance(token, Verified) or event.signature_header not in headers:
            return token
    if event.signature_header in headers:
        return _verify_hmac(event, headers, body, keys, now)
    return Rejected("no secret or signature header")


def _presented_tokens(event: EventConfig, headers: Headers) -> list[bytes]:
    presented = []
    if event.token_header in headers:
        presented.append(headers[event.token_header].strip())
    authorization = headers.get("authorization", b"").strip()
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        presented.append(credentials.strip())
    return presented


def _verify_token(event: EventConfig, headers: Headers, keys: list[bytes]) -> Verified | Rejected:
    presented = _presented_tokens(event, headers)
    if not presented:
        return Rejected("no secret header")
    if _any_equal(presented, keys):
        return Verified("token")
    return Rejected("secret does not match")


def _verify_hmac(
    event: EventConfig, headers: Headers, body: bytes, keys: list[bytes], now: float
) -> Verified | Rejected:
    header = headers.get(event.signature_header)
    if header is None:
        return Rejected("no signature header")
    message = body
    if event.timestamp_header:
        timestamp = _fresh_timestamp(headers.get(event.timestamp_header), event, now)
        if isinstance(timestamp, Rejected):
            return timestamp
        message = timestamp + b"." + body
    presented = _signature_candidates(header)
    expected = []
    for key in keys:
        digest = hmac.new(key, message, hashlib.sha256).digest()
        expected += [
            digest.hex().encode(),
            base64.b64encode(digest),
            base64.urlsafe_b64encode(digest),
        ]
    if _any_equal(presented, expected):
        return Verified("hmac-sha256")
    return Rejected("signature does not match")


def _signature_candidates(header: bytes) -> list[bytes]:
    """A header may hold one signature or a list; each may carry a `sha256=` prefix."""
    candidates = []
    for part in header.replace(b",", b" ").split():
        if part[:7].lower() == _SHA256_PREFIX:
            part = part[7:]
        # Hex is compared lowercased; base64 is case-sensitive, so keep both forms.
        candidates += [part, part.lower()] if part != part.lower() else [part]
    return candidates


def _verify_standard(
    event: EventConfig, headers: Headers, body: bytes, now: float
) -> Verified | Rejected:
    """Standard Webhooks: HMAC-SHA256 over "{id}.{timestamp}.{body}", base64, `v1,` entries."""
    msg_id = headers.get("webhook-id")
    signature_header = headers.get("webhook-signature")
    if not msg_id or signature_header is None:
        return Rejected("missing webhook-id or webhook-signature")
    timestamp = _fresh_timestamp(headers.get("webhook-timestamp"), event, now)
    if isinstance(timestamp, Rejected):
        return timestamp
    message = msg_id + b"." + timestamp + b"." + body
    expected = [
        base64.b64encode(hmac.new(key, message, hashlib.sha256).digest())
        for key in (standard_key(secret) for secret in event.secrets)
    ]
    presented = []
    for entry in signature_header.split():
        version, _, signature = entry.partition(b",")
        if version == b"v1" and signature:
            presented.append(signature)
    if _any_equal(presented, expected):
        return Verified("standard-webhooks")
    return Rejected("signature does not match")


def standard_key(secret: str) -> bytes:
    """A Standard Webhooks signing key: base64 after "whsec_", else the secret's own bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def _fresh_timestamp(value: bytes | None, event: EventConfig, now: float) -> bytes | Rejected:
    if value is None:
        return Rejected("missing timestamp header")
    text = value.strip()
    if not text.isdigit() or len(text) > 12:
        return Rejected("timestamp is not a Unix time in seconds")
    if abs(now - int(text)) > event.tolerance_seconds:
        return Rejected("timestamp outside tolerance")
    return text


def _any_equal(presented: list[bytes], expected: list[bytes]) -> bool:
    # Compare every pair, without stopping at the first match, so timing says nothing about
    # which secret (or how many) matched.
    matched = False
    for candidate in presented:
        for value in expected:
            matched |= hmac.compare_digest(candidate, value)
    return matched
