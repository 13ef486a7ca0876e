"""The sender's side of service/http/verification.py: the headers a JTE-like sender puts on a
delivery.

Used by the simulator and by anyone who needs deliveries that rollcall accepts; each mode signs
exactly what `service.http.verification.verify` checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from service.config import EventConfig
from service.http.verification import standard_key


def sign(
    event: EventConfig,
    body: bytes,
    *,
    now: float,
    secret: str | None = None,
    delivery_id: str | None = None,
) -> dict[str, str]:
    """Headers (content-type included) that a JTE-like sender would send for `body`, signed for
    event.mode with `secret` (default: the event's first secret) at Unix time `now`.

    Header values are the UTF-8 bytes decoded as latin-1: a client that sends `str` values as
    latin-1 puts the secret's UTF-8 bytes on the wire, as JTE would (service.jte.sender does so).
    """
    key = event.secrets[0] if secret is None else secret
    headers = {"content-type": "application/json"}
    if event.delivery_id_header and delivery_id is not None:
        headers[event.delivery_id_header] = _wire(delivery_id)
    if event.mode == "token":
        headers[event.token_header] = _wire(key)
    elif event.mode == "standard-webhooks":
        headers.update(_standard_webhooks(key, body, now, delivery_id))
    else:
        headers.update(_hmac_sha256(event, key, body, now))
    return headers


def _hmac_sha256(event: EventConfig, secret: str, body: bytes, now: float) -> dict[str, str]:
    headers = {}
    message = body
    if event.timestamp_header:
        timestamp = str(int(now))
        headers[event.timestamp_header] = timestamp
        message = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    headers[event.signature_header] = "sha256=" + digest
    return headers


def _standard_webhooks(
    secret: str, body: bytes, now: float, delivery_id: str | None
) -> dict[str, str]:
    if not delivery_id:
        raise ValueError("standard-webhooks signing needs a delivery id (webhook-id)")
    timestamp = str(int(now))
    message = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), message, hashlib.sha256).digest()
    return {
        "webhook-id": _wire(delivery_id),
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def _wire(value: str) -> str:
    return value.encode().decode("latin-1")
