"""Verification modes, checked against independently computed signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from service.config import EventConfig
from service.http.verification import MAX_SIGNATURES, Rejected, Verified, verify

BODY = b'{"event":"AttendeeCheckedIn","attendee":{"id":"a-1"}}'
OLD, NEW = "old secret", "new sekret ąę"
NOW = 1_800_000_000.0


def event(mode: str = "default", **kwargs: object) -> EventConfig:
    return EventConfig(slug="conf", mode=mode, secrets=(OLD, NEW), **kwargs)  # type: ignore[arg-type]


def sign(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


@pytest.mark.parametrize("secret", [OLD, NEW])
def test_token_in_header_or_bearer_for_every_active_secret(secret: str) -> None:
    assert verify(event("token"), {"x-webhook-secret": secret.encode()}, BODY, NOW) == Verified(
        "token"
    )
    bearer = {"authorization": b"Bearer " + secret.encode()}
    assert verify(event("token"), bearer, BODY, NOW) == Verified("token")


def test_token_wrong_or_missing() -> None:
    assert verify(event("token"), {"x-webhook-secret": b"guess"}, BODY, NOW) == Rejected(
        "secret does not match"
    )
    assert verify(event("token"), {"authorization": b"Basic abc"}, BODY, NOW) == Rejected(
        "no secret header"
    )
    assert verify(event("token"), {}, BODY, NOW) == Rejected("no secret header")


def test_token_header_name_is_configurable() -> None:
    custom = event("token", token_header="x-jte-secret")
    assert isinstance(verify(custom, {"x-jte-secret": OLD.encode()}, BODY, NOW), Verified)
    assert isinstance(verify(custom, {"x-webhook-secret": OLD.encode()}, BODY, NOW), Rejected)


@pytest.mark.parametrize(
    "encode",
    [
        lambda d: d.hex(),
        lambda d: "sha256=" + d.hex(),
        lambda d: "SHA256=" + d.hex().upper(),
        lambda d: base64.b64encode(d).decode(),
        lambda d: "sha256=" + base64.b64encode(d).decode(),
    ],
    ids=["hex", "prefixed-hex", "upper-hex", "base64", "prefixed-base64"],
)
def test_hmac_over_exact_body_in_any_encoding(encode: object) -> None:
    for secret in (OLD, NEW):
        header = encode(sign(secret, BODY)).encode()  # type: ignore[operator]
        assert verify(event("hmac-sha256"), {"x-webhook-signature": header}, BODY, NOW) == Verified(
            "hmac-sha256"
        )


def test_hmac_refuses_an_altered_body_and_a_token() -> None:
    header = sign(OLD, BODY).hex().encode()
    altered = BODY.replace(b"a-1", b"a-2")
    assert verify(event("hmac-sha256"), {"x-webhook-signature": header}, altered, NOW) == Rejected(
        "signature does not match"
    )
    assert verify(event("hmac-sha256"), {"x-webhook-secret": OLD.encode()}, BODY, NOW) == Rejected(
        "no signature header"
    )


def test_hmac_with_signed_timestamp_and_tolerance() -> None:
    timed = event("hmac-sha256", timestamp_header="x-webhook-timestamp")
    ts = str(int(NOW) - 299).encode()
    good = {
        "x-webhook-timestamp": ts,
        "x-webhook-signature": sign(NEW, ts + b"." + BODY).hex().encode(),
    }
    assert verify(timed, good, BODY, NOW) == Verified("hmac-sha256")
    stale_ts = str(int(NOW) - 301).encode()
    stale = {
        "x-webhook-timestamp": stale_ts,
        "x-webhook-signature": sign(NEW, stale_ts + b"." + BODY).hex().encode(),
    }
    assert verify(timed, stale, BODY, NOW) == Rejected("timestamp outside tolerance")
    body_only = {"x-webhook-timestamp": ts, "x-webhook-signature": sign(NEW, BODY).hex().encode()}
    assert verify(timed, body_only, BODY, NOW) == Rejected("signature does not match")
    assert verify(timed, {"x-webhook-signature": b"00"}, BODY, NOW) == Rejected(
        "missing timestamp header"
    )


def test_default_mode_accepts_token_or_hmac() -> None:
    default = event()
    assert verify(default, {"x-webhook-secret": NEW.encode()}, BODY, NOW) == Verified("token")
    signature = {"x-webhook-signature": b"sha256=" + sign(NEW, BODY).hex().encode()}
    assert verify(default, signature, BODY, NOW) == Verified("hmac-sha256")
    # A wrong token next to a right signature: the signature decides.
    both = {"x-webhook-secret": b"wrong", **signature}
    assert verify(default, both, BODY, NOW) == Verified("hmac-sha256")
    assert verify(default, {"x-webhook-secret": b"wrong"}, BODY, NOW) == Rejected(
        "secret does not match"
    )
    assert verify(default, {}, BODY, NOW) == Rejected("no secret or signature header")


def standard_event(secret: str) -> EventConfig:
    return EventConfig(slug="conf", mode="standard-webhooks", secrets=(secret,))


def signed_by_reference(secret: str, msg_id: str, when: float, body: bytes) -> dict[str, bytes]:
    """Headers produced by the `standardwebhooks` package, the spec's reference implementation."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(when, tz=UTC), body.decode())
    return {
        "webhook-id": msg_id.encode(),
        "webhook-timestamp": str(int(when)).encode(),
        "webhook-signature": signature.encode(),
    }


def test_standard_webhooks_reference_signature_verifies() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    now = time.time()
    headers = signed_by_reference(secret, "msg_2Lh9", now, BODY)
    assert verify(standard_event(secret), headers, BODY, now) == Verified("standard-webhooks")
    # A list of signatures (during the sender's own rotation) verifies if any entry matches.
    headers["webhook-signature"] = b"v1,bm90IGl0 " + headers["webhook-signature"]
    assert verify(standard_event(secret), headers, BODY, now) == Verified("standard-webhooks")


def test_standard_webhooks_refusals() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    sent_at = time.time()
    headers = signed_by_reference(secret, "msg_1", sent_at, BODY)
    config = standard_event(secret)
    assert verify(config, headers, BODY + b" ", sent_at) == Rejected("signature does not match")
    assert verify(config, headers, BODY, sent_at + 301) == Rejected("timestamp outside tolerance")
    assert verify(config, headers, BODY, sent_at - 301) == Rejected("timestamp outside tolerance")
    assert verify(config, {**headers, "webhook-id": b"msg_2"}, BODY, sent_at) == Rejected(
        "signature does not match"
    )
    no_id = {k: v for k, v in headers.items() if k != "webhook-id"}
    assert verify(config, no_id, BODY, sent_at) == Rejected(
        "missing webhook-id or webhook-signature"
    )
    other = "whsec_" + base64.b64encode(b"z" * 24).decode()
    assert verify(standard_event(other), headers, BODY, sent_at) == Rejected(
        "signature does not match"
    )


def test_rejections_never_name_the_secret() -> None:
    for mode in ("default", "token", "hmac-sha256", "standard-webhooks"):
        verdict = verify(
            event(mode), {"x-webhook-secret": b"nope", "x-webhook-signature": b"00"}, BODY, NOW
        )
        assert isinstance(verdict, Rejected)
        assert OLD not in verdict.reason and NEW not in verdict.reason


def test_signature_candidates_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: a 63 KB X-Webhook-Signature of 21,000 parts became 42,000 candidates, each
    # compared with every secret's three encodings: 10.5 ms of CPU per 401, more during a
    # rotation. Now more than MAX_SIGNATURES parts is refused before any comparison.
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(candidate: bytes, expected: bytes) -> bool:
        compared.append(candidate)
        return real(candidate, expected)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    flood = b"Ab," * 21_000
    for mode in ("default", "hmac-sha256"):
        verdict = verify(event(mode), {"x-webhook-signature": flood}, BODY, NOW)
        assert verdict == Rejected(f"more than {MAX_SIGNATURES} signatures")
    standard = {"webhook-id": b"msg_1", "webhook-timestamp": str(int(NOW)).encode()}
    standard["webhook-signature"] = b"v1,Ab " * 21_000
    verdict = verify(standard_event("whsec_" + "A" * 32), standard, BODY, NOW)
    assert verdict == Rejected(f"more than {MAX_SIGNATURES} signatures")
    assert compared == []
    # Up to the bound every candidate is still tried under every secret: the eighth verifies.
    good = sign(NEW, BODY).hex().encode()
    eight = b", ".join([b"00"] * (MAX_SIGNATURES - 1) + [good])
    assert verify(event("hmac-sha256"), {"x-webhook-signature": eight}, BODY, NOW) == Verified(
        "hmac-sha256"
    )
    assert len(compared) == MAX_SIGNATURES * 2 * 3  # candidates x secrets x encodings
    nine = b"00 " + eight
    assert verify(event("hmac-sha256"), {"x-webhook-signature": nine}, BODY, NOW) == Rejected(
        f"more than {MAX_SIGNATURES} signatures"
    )
