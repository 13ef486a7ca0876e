"""`rollcall doctor` and GET /v1/doctor over the real server: for each verification mode, a
sender using another scheme (or an unknown header) is refused, the advice names what it sends,
and the configuration it proposes really accepts the same request."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from service.config import EventConfig
from tests.helpers import RunningService, api_token, bearer, delivery, wait_until
from tests.test_cli import ROLLCALL, child_env

JTE_SECRET = "jte-secret-4f7a9c"
BODY = delivery(attendee_id="a-1", delivery_id="d-1")


def hex_hmac(message: bytes, secret: str = JTE_SECRET) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def standard(body: bytes) -> dict[str, str]:
    key = b"0123456789abcdef0123456789abcdef"
    stamp = str(int(time.time()))
    signed = hmac.new(key, b"msg_1." + stamp.encode() + b"." + body, hashlib.sha256).digest()
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(signed).decode(),
    }


STANDARD_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

# (configured event, what JTE sends, what the advice must say, the secret to put in its config)
CASES: dict[str, tuple[EventConfig, Callable[[bytes], dict[str, str]], list[str], str]] = {
    "default-vs-unknown-header": (
        EventConfig(slug="default", secrets=("other",)),
        lambda body: {"x-jte-signature": hex_hmac(body)},
        ["`x-jte-signature` (64 hex characters)", 'signature_header = "x-jte-signature"'],
        JTE_SECRET,
    ),
    "token-vs-standard-webhooks": (
        EventConfig(slug="default", mode="token", secrets=("other",)),
        standard,
        ["Standard Webhooks", 'mode = "standard-webhooks"'],
        STANDARD_SECRET,
    ),
    "hmac-vs-bearer": (
        EventConfig(slug="default", mode="hmac-sha256", secrets=("other",)),
        lambda body: {"authorization": "Bearer " + JTE_SECRET},
        ["Authorization: Bearer", 'mode = "token"'],
        JTE_SECRET,
    ),
    "standard-webhooks-vs-token-header": (
        EventConfig(slug="default", mode="standard-webhooks", secrets=(STANDARD_SECRET,)),
        lambda body: {"x-jte-token": JTE_SECRET},
        ["`x-jte-token`", 'token_header = "x-jte-token"'],
        JTE_SECRET,
    ),
    "hmac-vs-timestamped-hmac": (
        EventConfig(slug="default", mode="hmac-sha256", secrets=("other",)),
        lambda body: {
            "x-tito-timestamp": str(int(time.time())),
            "x-tito-signature": hex_hmac(str(int(time.time())).encode() + b"." + body),
        },
        ['signature_header = "x-tito-signature"', 'timestamp_header = "x-tito-timestamp"'],
        JTE_SECRET,
    ),
}


def send(url: str, headers: dict[str, str], body: bytes = BODY) -> int:
    sent = {"content-type": "application/json", **headers}
    return httpx.post(url + "/webhooks/jte", content=body, headers=sent, timeout=10).status_code


def advice_for(url: str, database_url: str) -> dict[str, Any]:
    admin = bearer(api_token(database_url, "admin"))
    found: dict[str, Any] = {}

    def advised() -> bool:
        answer = httpx.get(url + "/v1/doctor", headers=admin, timeout=10)
        assert answer.status_code == 200, answer.text
        found.update(answer.json())
        return bool(found["advice"])

    wait_until(advised, timeout=20)
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_advice_names_the_scheme_and_its_config_accepts_it(
    start_service: Callable[..., RunningService], database_url: str, case: str
) -> None:
    configured, scheme, expected, secret = CASES[case]
    service = start_service(events={"default": configured})
    headers = scheme(BODY)
    assert send(service.url, headers) == 401
    diagnosis = advice_for(service.url, database_url)
    (advice,) = diagnosis["advice"]
    said = " ".join(advice["findings"]) + "\n" + (advice["config"] or "")
    for words in expected:
        assert words in said, (words, said)
    # Advice never repeats what JTE sent: not its secret, not its signature.
    for value in headers.values():
        if len(value) > 12:
            assert value.split(",")[-1] not in str(diagnosis)
    assert JTE_SECRET not in str(diagnosis)
    # The configuration proposed, with the secret filled in, accepts the same request.
    table = tomllib.loads(advice["config"].replace("<", "").replace(">", ""))["events"]["default"]
    table["secret"] = secret
    accepting = msgspec.convert({**table, "slug": "default"}, EventConfig)
    accepting = msgspec.structs.replace(accepting, secrets=(secret,), secret=None)
    fixed = start_service(events={"default": accepting})
    assert send(fixed.url, scheme(BODY)) == 200


def test_wrong_secret_with_the_right_scheme_says_so(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service(events={"default": EventConfig(slug="default", secrets=("ours",))})
    assert send(service.url, {"x-webhook-signature": "sha256=" + hex_hmac(BODY)}) == 401
    (advice,) = advice_for(service.url, database_url)["advice"]
    assert advice["reasons"] == {"signature_mismatch": 1}
    assert "secret rollcall does not have" in " ".join(advice["findings"])
    assert advice["config"] is None


def test_doctor_command_reads_the_same_log(
    start_service: Callable[..., RunningService], database_url: str, tmp_path: Path
) -> None:
    service = start_service(events={"default": EventConfig(slug="default", secrets=("ours",))})
    assert send(service.url, {"x-jte-signature": hex_hmac(BODY)}) == 401
    assert httpx.post(service.url + "/webhooks/jte/spring", content=BODY).status_code == 404
    advice_for(service.url, database_url)
    env = child_env(tmp_path, DATABASE_URL=database_url, ROLLCALL_SECRET="ours")
    done = subprocess.run(
        [*ROLLCALL, "doctor"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "`x-jte-signature` (64 hex characters)" in done.stdout
    assert "`/webhooks/jte/spring`" in done.stdout
    assert "[events.spring]" in done.stdout
    as_json = subprocess.run(
        [*ROLLCALL, "doctor", "--json"], env=env, capture_output=True, timeout=60, check=False
    )
    assert msgspec.json.decode(as_json.stdout)["refusals"] == 2
    listed = subprocess.run(
        [*ROLLCALL, "deliveries", "--outcome", "rejected", "--json"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    reasons = sorted(item["reason"] for item in msgspec.json.decode(listed.stdout))
    assert reasons == ["no_credentials", "unknown_event"]
    usage = subprocess.run(
        [*ROLLCALL, "deliveries", "--from", "yesterday"], env=env, capture_output=True, check=False
    )
    assert usage.returncode == 2
