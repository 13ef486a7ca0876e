"""`rollcall doctor`: what the recent refusals say JTE sends, and which configuration would
accept it, in plain words.

It reads only the intake log's metadata (service/intake_log.py): header names and the shapes of
their values (`hex:64`, `v1,base64:44`), never a value, so its advice can name a header and an
encoding but never repeat a secret. Pure functions: the CLI and GET /v1/doctor read the log.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Final

import msgspec

from service.config import DEFAULT_SLUG, EventConfig, env_name
from service.intake_log import Entry
from service.metrics import OTHER_EVENT

_CORE: Final = re.compile(
    r"^(?:(?P<prefix>[A-Za-z][A-Za-z0-9_-]*[=,]))?(?P<kind>[a-z0-9]+):(?P<n>\d+)"
)
_TOKEN_WORDS: Final = ("secret", "token", "key", "auth", "api", "password", "pass")
_TIME_WORDS: Final = ("time", "ts", "date")
_STANDARD: Final = ("webhook-id", "webhook-timestamp", "webhook-signature")
_DIGESTS: Final = {
    ("hex", 64): "SHA-256",
    ("base64", 44): "SHA-256",
    ("base64", 43): "SHA-256",
    ("hex", 40): "SHA-1",
    ("base64", 28): "SHA-1",
    ("hex", 128): "SHA-512",
    ("base64", 88): "SHA-512",
}


class Advice(msgspec.Struct, frozen=True, kw_only=True):
    """What the refusals for one JTE event (or for paths naming none: `other`) say."""

    event: str
    refusals: int
    last_at: datetime
    reasons: dict[str, int]  # snake_case reason: how many
    headers: dict[str, str]  # unusual header names seen in most refusals: their value's shape
    findings: list[str]  # plain sentences, most useful first
    config: str | None  # a configuration that would accept what JTE sends, if one is known


class Diagnosis(msgspec.Struct, frozen=True, kw_only=True):
    hours: float
    refusals: int
    advice: list[Advice]


def diagnose(
    entries: Sequence[Entry], events: Mapping[str, EventConfig], hours: float
) -> Diagnosis:
    """Advice per event from the refusals in `entries` (newest first)."""
    refused = [e for e in entries if e.outcome == "rejected"]
    by_event: dict[str, list[Entry]] = {}
    for entry in refused:
        by_event.setdefault(entry.event, []).append(entry)
    advice = [
        _advise(slug, group, events.get(slug), events)
        for slug, group in sorted(by_event.items(), key=lambda item: -len(item[1]))
    ]
    return Diagnosis(hours=hours, refusals=len(refused), advice=advice)


def _advise(
    slug: str, entries: list[Entry], event: EventConfig | None, events: Mapping[str, EventConfig]
) -> Advice:
    reasons = Counter(e.reason for e in entries)
    seen = Counter(name for e in entries for name in e.headers.shapes)
    common = {
        name: Counter(
            e.headers.shapes[name] for e in entries if name in e.headers.shapes
        ).most_common(1)[0][0]
        for name, count in seen.items()
        if count * 2 >= len(entries)
    }
    findings: list[str] = []
    config: str | None = None
    if reasons["unknown_event"]:
        paths = Counter(e.path for e in entries if e.reason == "unknown_event").most_common(3)
        shown = ", ".join(f"`{path}` ({count})" for path, count in paths)
        configured = ", ".join(f"/webhooks/jte/{s}" for s in events) or "none"
        findings.append(
            f"JTE posts to paths that name no configured event: {shown}. Configured: "
            f"{configured}. Point JTE at one of those, or add the event to the configuration."
        )
        named = _slug_of(paths[0][0])
        if named is not None:
            config = f'[events.{named}]\nmode = "default"\nsecret = "<the secret JTE has>"'
    unauthorized = sum(n for reason, n in reasons.items() if reason not in _OTHER_REASONS)
    if unauthorized and event is not None:
        found, config = _credentials(slug, event, common, reasons)
        findings += found
    for reason, sentence in _OTHER_REASONS.items():
        if reasons[reason] and reason != "unknown_event":
            findings.append(sentence(entries))
    return Advice(
        event=slug,
        refusals=len(entries),
        last_at=max(e.at for e in entries),
        reasons=dict(reasons.most_common()),
        headers=common,
        findings=findings,
        config=config,
    )


def _credentials(
    slug: str, event: EventConfig, headers: dict[str, str], reasons: Counter[str]
) -> tuple[list[str], str | None]:
    """What the credential-looking headers say, and the configuration that would accept them."""
    described = ", ".join(f"`{name}` ({_plain(shape)})" for name, shape in headers.items())
    carry = f"Requests carry {described}." if headers else "Requests carry no unusual header."
    if all(name in headers for name in _STANDARD):
        if event.mode == "standard-webhooks":
            return [carry, *_same_scheme(reasons, "Standard Webhooks")], None
        return [
            f"{carry} That is Standard Webhooks (webhook-id, webhook-timestamp, "
            "webhook-signature): set the event's mode to standard-webhooks, with JTE's "
            "`whsec_` secret."
        ], _config(slug, {"mode": "standard-webhooks"}, "whsec_<JTE's signing secret>")
    signature = _signature_header(headers)
    if signature is not None:
        name, digest = signature
        if digest != "SHA-256":
            return [
                f"{carry} `{name}` looks like an HMAC-{digest} digest; rollcall verifies "
                "HMAC-SHA256 only: ask JTE for SHA-256 signatures."
            ], None
        timestamp = _timestamp_header(headers, exclude=name)
        settings = {"mode": "hmac-sha256", "signature_header": name}
        extra = ""
        if timestamp is not None:
            settings["timestamp_header"] = timestamp
            extra = (
                f' `{timestamp}` looks like a Unix time: if JTE signs "{{timestamp}}.{{body}}", '
                "keep timestamp_header; if it signs the body alone, leave it out."
            )
        if event.mode in ("hmac-sha256", "default") and event.signature_header == name:
            if event.timestamp_header is None and timestamp is not None:
                return [
                    f"{carry} The signature header is the configured one but does not match."
                    + extra
                ], _config(slug, settings, "<JTE's signing secret>")
            return [carry, *_same_scheme(reasons, "HMAC-SHA256")], None
        return [
            f"{carry} `{name}` looks like an HMAC-SHA256 signature ({_plain(headers[name])}), "
            f'but this event expects {_expects(event)}: set mode = "hmac-sha256" and '
            f'signature_header = "{name}".' + extra
        ], _config(slug, settings, "<JTE's signing secret>")
    if headers.get("authorization", "").startswith("bearer "):
        if event.mode in ("token", "default"):
            return [carry, *_same_scheme(reasons, "a bearer token")], None
        return [
            f"{carry} JTE sends its secret as `Authorization: Bearer`, but this event expects "
            f'{_expects(event)}: set mode = "token".'
        ], _config(slug, {"mode": "token"}, "<the secret JTE sends>")
    token = next((n for n in headers if any(w in n for w in _TOKEN_WORDS)), None)
    if token is not None:
        if event.mode in ("token", "default") and event.token_header == token:
            return [carry, *_same_scheme(reasons, "a token")], None
        return [
            f"{carry} `{token}` looks like a secret sent as it is ({_plain(headers[token])}), "
            f'but this event expects {_expects(event)}: set mode = "token" and '
            f'token_header = "{token}".'
        ], _config(slug, {"mode": "token", "token_header": token}, "<the secret JTE sends>")
    if headers:
        return [
            f"{carry} None of them is one rollcall knows as a secret or a signature, and this "
            f"event expects {_expects(event)}. Ask JTE which header carries the secret or "
            "signature, and how it is computed (docs/jte-notes lists the candidates)."
        ], None
    return [
        "Requests carry no secret or signature at all: JTE sends none. Set a secret (or "
        f"signing secret) in JTE's webhook settings; this event expects {_expects(event)}."
    ], None


def _same_scheme(reasons: Counter[str], scheme: str) -> list[str]:
    """The scheme is the configured one: what the refusals' reasons say is wrong."""
    said = []
    if reasons["secret_mismatch"] or reasons["signature_mismatch"]:
        said.append(
            f"JTE uses {scheme} as configured, but with a secret rollcall does not have: "
            "copy JTE's secret into the configuration (old and new may be listed together "
            "during a rotation)."
        )
    if reasons["stale_timestamp"]:
        said.append(
            "Timestamps are outside tolerance_seconds: one of the clocks is wrong, or JTE "
            "retries with the first attempt's timestamp; check NTP, or raise tolerance_seconds."
        )
    if reasons["bad_timestamp"] or reasons["no_timestamp_header"]:
        said.append(
            "The timestamp header configured is missing or not Unix seconds: check "
            "timestamp_header against the headers listed."
        )
    return said or [f"JTE uses {scheme} as configured; the refusals' reasons are listed."]


def _signature_header(headers: dict[str, str]) -> tuple[str, str] | None:
    for name, shape in headers.items():
        core = _CORE.match(shape)
        if core is None:
            continue
        digest = _DIGESTS.get((core.group("kind"), int(core.group("n"))))
        if digest is not None and name != "authorization":
            return name, digest
    return None


def _timestamp_header(headers: dict[str, str], exclude: str) -> str | None:
    for name, shape in headers.items():
        stamp = shape in ("digits:10", "digits:13")
        if name != exclude and stamp and any(word in name for word in _TIME_WORDS):
            return name
    return None


def _expects(event: EventConfig) -> str:
    if event.mode == "token":
        return f"a token in `{event.token_header}` or Authorization: Bearer"
    if event.mode == "hmac-sha256":
        stamped = f" with `{event.timestamp_header}`" if event.timestamp_header else ""
        return f"an HMAC-SHA256 signature in `{event.signature_header}`{stamped}"
    if event.mode == "standard-webhooks":
        return "Standard Webhooks headers"
    return (
        f"a token in `{event.token_header}` (or Authorization: Bearer) or an HMAC-SHA256 "
        f"signature in `{event.signature_header}`"
    )


def _plain(shape: str) -> str:
    """A shape in words: `sha256=hex:64` -> `sha256=` then 64 hex characters."""
    core = _CORE.match(shape)
    if core is None:
        return shape
    kinds = {"hex": "hex", "base64": "base64", "digits": "decimal", "text": "other"}
    prefix = f"`{core.group('prefix')}` then " if core.group("prefix") else ""
    scheme = shape.split(" ", 1)[0] + " " if shape.startswith(("bearer ", "basic ")) else ""
    if scheme:
        return f"{scheme.strip()} {_plain(shape.split(' ', 1)[1])}"
    many = " (several)" if re.search(r" x\d+$", shape) else ""
    return f"{prefix}{core.group('n')} {kinds.get(core.group('kind'), '')} characters{many}"


def _config(slug: str, settings: dict[str, str], secret: str) -> str:
    lines = [f"[events.{slug}]", *(f'{k} = "{v}"' for k, v in settings.items())]
    lines.append(f'secret = "{secret}"')
    if slug == DEFAULT_SLUG:
        env = " ".join(f"{env_name(k)}={v}" for k, v in settings.items())
        lines.append(f"# or, with no configuration file: {env} {env_name('secret')}=...")
    return "\n".join(lines)


def _slug_of(path: str) -> str | None:
    rest = path.removeprefix("/webhooks/jte/")
    return rest if rest != path and re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", rest) else None


def _largest(entries: Sequence[Entry]) -> str:
    sizes = [e.body_size for e in entries if e.reason == "body_too_large" and e.body_size]
    return f" (largest declared: {max(sizes)} bytes)" if sizes else ""


_OTHER_REASONS: Final[dict[str, Callable[[Sequence[Entry]], str]]] = {
    "unknown_event": lambda entries: "",
    "body_too_large": lambda entries: (
        "Some bodies are over body_limit" + _largest(entries) + ": raise body_limit "
        f"({env_name('body_limit')} or [intake] body_limit) if JTE's deliveries are that big."
    ),
    "unsupported_media_type": lambda entries: (
        "Some requests do not declare a JSON body (Content-Type): JTE must send application/json."
    ),
    "headers_too_large": lambda entries: (
        f"Some requests' headers are over header_limit ({env_name('header_limit')})."
    ),
    "body_timeout": lambda entries: (
        f"Some bodies did not arrive within body_timeout ({env_name('body_timeout')}): a slow "
        "network or proxy between JTE and rollcall."
    ),
    "method_not_allowed": lambda entries: "Some requests were not POSTs: JTE must POST.",
    "bad_content_length": lambda entries: "Some requests had a Content-Length that is no number.",
}


def text(diagnosis: Diagnosis) -> str:
    """The diagnosis as an operator reads it."""
    if not diagnosis.advice:
        return f"No refused deliveries in the last {diagnosis.hours:g} h: nothing to diagnose."
    out = [f"{diagnosis.refusals} refused deliveries in the last {diagnosis.hours:g} h."]
    for advice in diagnosis.advice:
        named = "paths naming no configured event" if advice.event == OTHER_EVENT else advice.event
        reasons = ", ".join(f"{reason} {count}" for reason, count in advice.reasons.items())
        out += [
            "",
            f"{named}: {advice.refusals} refused (last {advice.last_at:%Y-%m-%d %H:%M:%S}Z)",
        ]
        out.append(f"  reasons: {reasons}")
        out += [f"  - {finding}" for finding in advice.findings]
        if advice.config:
            out.append("  a configuration that would accept them:")
            out += [f"    {line}" for line in advice.config.splitlines()]
    return "\n".join(out)
