"""Verification of a delivery against a JTE event's secrets: token, HMAC-SHA256, Standard Webhooks.

Every comparison is constant-time, every active secret is tried, and no message names a
secret or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
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

# A header may carry several signatures (a sender signing with old and new secrets during a
# rotation); more than this is no sender's need, and each one costs a comparison per secret.
MAX_SIGNATURES: Final = 8
_TOO_MANY: Final = Rejected(f"more than {MAX_SIGNATURES} signatures")


class Pending(msgspec.Struct, frozen=True):
    """The headers are in order and only the body can decide: what it will be checked against."""

    method: str  # "hmac-sha256" or "standard-webhooks"
    signed_prefix: bytes  # what the signed message holds before the body
    presented: tuple[bytes, ...]  # the signatures the sender presented, in comparable forms


def verify(event: EventConfig, headers: Headers, body: bytes, now: float) -> Verified | Rejected:
    """Check a delivery's headers and exact body against the event's configured mode."""
    verdict = screen(event, headers, now)
    return check_body(event, verdict, body) if isinstance(verdict, Pending) else verdict


def screen(event: EventConfig, headers: Headers, now: float) -> Verified | Rejected | Pending:
    """What the headers alone decide: a token checked, a missing, stale or overlong credential
    refused; Pending when a signature over the body must decide."""
    if event.mode == "token":
        return _verify_token(event, headers)
    if event.mode == "hmac-sha256":
        return _screen_hmac(event, headers, now)
    if event.mode == "standard-webhooks":
        return _screen_standard(event, headers, now)
    if _presented_tokens(event, headers):
        token = _verify_token(event, headers)
        if isinstance(token, Verified) or event.signature_header not in headers:
            return token
    if event.signature_header in headers:
        return _screen_hmac(event, headers, now)
    return Rejected("no secret or signature header")


def check_body(event: EventConfig, pending: Pending, body: bytes) -> Verified | Rejected:
    """The body's signature, under every active secret, against what the sender presented."""
    if pending.method == "standard-webhooks":
        keys = [standard_key(secret) for secret in event.secrets]
    else:
        keys = [secret.encode() for secret in event.secrets]
    expected = []
    for key in keys:
        mac = hmac.new(key, pending.signed_prefix, hashlib.sha256)
        mac.update(body)
        digest = mac.digest()
        if pending.method == "standard-webhooks":
            expected.append(base64.b64encode(digest))
        else:
            expected += [
                digest.hex().encode(),
                base64.b64encode(digest),
                base64.urlsafe_b64encode(digest),
            ]
    if _any_equal(pending.presented, expected):
        return Verified(pending.method)
    return Rejected("signature does not match")


def _presented_tokens(event: EventConfig, headers: Headers) -> list[bytes]:
    presented = []
    if event.token_header in headers:
        presented.append(headers[event.token_header].strip())
    authorization = headers.get("authorization", b"").strip()
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        presented.append(credentials.strip())
    return presented


def _verify_token(event: EventConfig, headers: Headers) -> Verified | Rejected:
    presented = _presented_tokens(event, headers)
    if not presented:
        return Rejected("no secret header")
    if _any_equal(presented, [secret.encode() for secret in event.secrets]):
        return Verified("token")
    return Rejected("secret does not match")


def _screen_hmac(event: EventConfig, headers: Headers, now: float) -> Pending | Rejected:
    header = headers.get(event.signature_header)
    if header is None:
        return Rejected("no signature header")
    prefix = b""
    if event.timestamp_header:
        timestamp = _fresh_timestamp(headers.get(event.timestamp_header), event, now)
        if isinstance(timestamp, Rejected):
            return timestamp
        prefix = timestamp + b"."
    parts = header.replace(b",", b" ").split(maxsplit=MAX_SIGNATURES)
    if len(parts) > MAX_SIGNATURES:
        return _TOO_MANY
    presented: list[bytes] = []
    for part in parts:
        if part[:7].lower() == _SHA256_PREFIX:
            part = part[7:]
        # Hex is compared lowercased; base64 is case-sensitive, so keep both forms.
        presented += [part, part.lower()] if part != part.lower() else [part]
    return Pending("hmac-sha256", prefix, tuple(presented))


def _screen_standard(event: EventConfig, headers: Headers, now: float) -> Pending | Rejected:
    """Standard Webhooks: HMAC-SHA256 over "{id}.{timestamp}.{body}", base64, `v1,` entries."""
    msg_id = headers.get("webhook-id")
    signature_header = headers.get("webhook-signature")
    if not msg_id or signature_header is None:
        return Rejected("missing webhook-id or webhook-signature")
    timestamp = _fresh_timestamp(headers.get("webhook-timestamp"), event, now)
    if isinstance(timestamp, Rejected):
        return timestamp
    entries = signature_header.split(maxsplit=MAX_SIGNATURES)
    if len(entries) > MAX_SIGNATURES:
        return _TOO_MANY
    presented = []
    for entry in entries:
        version, _, signature = entry.partition(b",")
        if version == b"v1" and signature:
            presented.append(signature)
    return Pending("standard-webhooks", msg_id + b"." + timestamp + b".", tuple(presented))


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


# Each refusal's message (above), as metrics and the rejection log name it.
REASON_CODES: Final = {
    "no secret or signature header": "no_credentials",
    "no secret header": "no_secret_header",
    "secret does not match": "secret_mismatch",
    "no signature header": "no_signature_header",
    _TOO_MANY.reason: "too_many_signatures",
    "signature does not match": "signature_mismatch",
    "missing webhook-id or webhook-signature": "missing_webhook_headers",
    "missing timestamp header": "no_timestamp_header",
    "timestamp is not a Unix time in seconds": "bad_timestamp",
    "timestamp outside tolerance": "stale_timestamp",
}


def reason_code(message: str) -> str:
    """A refusal's short snake_case name (`unauthorized` for a message not listed)."""
    return REASON_CODES.get(message, "unauthorized")


def _any_equal(presented: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    # Compare every pair, without stopping at the first match, so timing says nothing about
    # which secret (or how many) matched.
    matched = False
    for candidate in presented:
        for value in expected:
            matched |= hmac.compare_digest(candidate, value)
    return matched
