"""Settings, declared once: environment variables for the one-event quick start, a TOML file
for several JTE events.

`Settings` is the one tree: every field is read from the environment variable its name gives
(ROLLCALL_<NAME>; DATABASE_URL for the database), the `Tuning` part also from the TOML file's
`[intake]` table, each JTE event from a table `[events.<slug>]` decoded into `EventConfig`.
Nothing else in rollcall reads the environment for a setting.

Secrets are never logged. A JTE event configured without secrets gets one generated on first
start, kept in the data directory with mode 0600 and shown by `rollcall secret`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import secrets
import tempfile
import time
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

Mode = Literal["default", "token", "hmac-sha256", "standard-webhooks"]
LogFormat = Literal["text", "json"]
DEFAULT_SLUG: Final = "default"
SLUG_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEFAULT_HEADER_LIMIT: Final = 64 * 1024

log = logging.getLogger("rollcall.config")


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to fix."""


class EventConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How deliveries for one JTE event (conference) are verified and identified: a table
    `[events.<slug>]` of the TOML file, or the `default` event from the environment."""

    slug: str = DEFAULT_SLUG  # the table's name, never a key of it
    mode: Mode = "default"
    # Several secrets may be active at once, so a secret can be rotated without downtime.
    secrets: tuple[str, ...] = ()
    # One more secret, as the TOML file or ROLLCALL_SECRET gives it: loading adds it to
    # `secrets`, so a loaded event's `secret` is None.
    secret: str | None = None
    token_header: str = "x-webhook-secret"  # noqa: S105 - a header name
    signature_header: str = "x-webhook-signature"
    # When set, the HMAC covers "{timestamp}.{body}" and the timestamp must be fresh.
    timestamp_header: str | None = None
    # A header carrying a delivery id that stays the same across JTE's retries.
    delivery_id_header: str | None = None
    tolerance_seconds: int = 300
    # Personal data of this JTE event is erased automatically this many days after its last
    # delivery (service/privacy.py); None keeps it until erased by hand.
    retain_personal_data_days: int | None = None
    # The IANA time zone of the event's venue: day and hour answers (payments by day, the
    # timeline's buckets) are cut at its local midnights and hours. API requests may override it
    # with `tz=`.
    timezone: str = "UTC"


class Tuning(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The limits and switches of intake, storage, exports and the HTTP server: each is set by
    its name in the TOML file's `[intake]` table, or by ROLLCALL_<NAME> (which wins)."""

    body_limit: int = 1024 * 1024
    body_timeout: float = 10.0
    retry_after_seconds: int = 5
    group_commit: bool = True
    batch_max: int = 256
    batch_linger_ms: float = 2.0
    batch_writers: int = 2
    queue_max: int = 4096
    store_threads: int = 4
    store_timeout: float = 5.0
    projections: bool = True
    # Where the live views are folded: a supervised child process (out of intake's event loop
    # and GIL), or a thread of the server process as before (service/runner_process.py).
    projection_runner: Literal["process", "thread"] = "process"
    # Requests in progress at most, per process (uvicorn's limit_concurrency).
    max_connections: int = 2048
    # Bytes of bodies still unverified (signed over the body) held at once, per process.
    unverified_body_memory: int = 32 * 1024 * 1024
    # CSV exports (service/http/exports.py): at once, whole-export deadline, longest stall.
    export_connections: int = 4
    export_timeout: float = 600.0
    export_stall: float = 60.0
    # A request's line and headers (service/http/server.py): their deadline and their size.
    header_timeout: float = 10.0
    # Seconds a kept-alive connection may idle before the server closes it. Longer than the
    # idle timeouts of the proxies put in front (Caddy 120 s, Go's transport 90 s, nginx's
    # upstream keepalive and AWS's ALB 60 s): a proxy that reuses a connection as the server
    # closes it fails that POST (a 502 for JTE). Idle connections take no request slot.
    keep_alive: int = 130
    header_limit: int = DEFAULT_HEADER_LIMIT


class Settings(Tuning, frozen=True, kw_only=True):
    """Everything rollcall needs: the Tuning, where it runs, and the JTE events it serves."""

    data_dir: Path = Path(".rollcall")
    database_url: str | None = None
    config: Path | None = None  # the TOML file (its JTE events replace the `default` one)
    host: str = "127.0.0.1"  # where `rollcall serve` listens
    port: int = 8000
    log_format: LogFormat = "text"
    events: dict[str, EventConfig] = {}
    # The master key that wraps personal data's keys (ROLLCALL_MASTER_KEY: 32 bytes, base64 or
    # hex); unset, it is the data directory's master.key, generated on first start. A secret:
    # never logged (service/eventstore/keys.py).
    master_key: str | None = None

    def event(self, slug: str) -> EventConfig | None:
        return self.events.get(slug)


class _ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    intake: Tuning = Tuning()
    events: dict[str, dict[str, Any]] = {}


# Each field's environment variable is ROLLCALL_<NAME>, but for these.
_ENV_NAMES: Final = {"database_url": "DATABASE_URL", "mode": "ROLLCALL_VERIFY_MODE"}
# Fields no environment variable sets: the TOML file's events; an event's slug and its list of
# secrets (the environment's one is `secret`).
_NOT_FROM_ENV: Final = frozenset({"events", "slug", "secrets"})


def env_name(field: str) -> str:
    """The environment variable that sets a field of Settings or EventConfig."""
    return _ENV_NAMES.get(field, "ROLLCALL_" + field.upper())


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from the environment and the TOML file ROLLCALL_CONFIG may name."""
    env = os.environ if environ is None else environ
    values = _from_env(env, Settings)
    path: Path | None = values.get("config")
    if path is not None:
        intake, events = _read_config_file(path)
        values = {**intake, **values}  # the environment wins
    else:
        events = {DEFAULT_SLUG: _event(DEFAULT_SLUG, EventConfig(**_from_env(env, EventConfig)))}
    values["data_dir"] = Path(values.get("data_dir", ".rollcall")).expanduser().resolve()
    settings = Settings(**values, events=events)
    _check_limits(settings)
    return settings


def ensure_secrets(settings: Settings) -> Settings:
    """Give every JTE event without a configured secret its generated one (created on first use)."""
    events = {
        slug: event
        if event.secrets
        else msgspec.structs.replace(
            event, secrets=(generated_secret(settings.data_dir, slug, event.mode),)
        )
        for slug, event in settings.events.items()
    }
    return msgspec.structs.replace(settings, events=events)


def generated_secret(data_dir: Path, slug: str, mode: Mode) -> str:
    """Read the generated secret of a JTE event, creating it (mode 0600) if it does not exist."""
    path = data_dir / "secrets" / slug
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = _new_secret(mode)
    # Write to a private temporary file, then link it into place: of two processes starting at
    # once, exactly one secret wins and nobody ever reads a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{slug}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_text().strip()


def _new_secret(mode: Mode) -> str:
    if mode == "standard-webhooks":
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(32)


def _from_env(env: Mapping[str, str], struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The fields of `struct` the environment sets (an empty variable sets nothing), typed."""
    values = {}
    for field in msgspec.structs.fields(struct):
        text = env.get(env_name(field.name)) if field.name not in _NOT_FROM_ENV else None
        if text:
            values[field.name] = _parse(env_name(field.name), text, field.type)
    return values


def _parse(variable: str, text: str, kind: Any) -> Any:
    """A variable's text as a value of `kind` (a scalar, a Literal, a Path, or None of them)."""
    options = [k for k in typing.get_args(kind) if k is not type(None)]
    if typing.get_origin(kind) is not Literal and options:
        kind = options[0]  # `X | None`: a variable that is set is an X
    if kind is Path:
        return Path(text)
    if kind is bool:
        return _parse_flag(variable, text)
    if typing.get_origin(kind) is Literal:
        if text not in typing.get_args(kind):
            raise ConfigError(f"{variable} must be one of {', '.join(typing.get_args(kind))}")
        return text
    try:
        return msgspec.convert(text, kind, strict=False)
    except msgspec.ValidationError:
        raise ConfigError(f"{variable}={text!r} is not a valid {kind.__name__}") from None


def _parse_flag(variable: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable}={text!r} is not a valid bool")


def _read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, EventConfig]]:
    """The `[intake]` values the file sets, and its JTE events."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"ROLLCALL_CONFIG names {path}, which does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    try:
        file = msgspec.convert(raw, _ConfigFile)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{path}: {_without_values(error)}") from None
    events = {}
    for slug, table in file.events.items():
        if "slug" in table:
            raise ConfigError(f"{path}: JTE event {slug!r}: its slug is its table's name")
        try:
            events[slug] = _event(slug, msgspec.convert(table, EventConfig))
        except msgspec.ValidationError as error:
            raise ConfigError(f"{path}: JTE event {slug!r}: {_without_values(error)}") from None
    given = {name: getattr(file.intake, name) for name in raw.get("intake", {})}
    return given, events


# A value as msgspec quotes it (Python's repr: single quotes, or double when it holds one).
_QUOTED: Final = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _without_values(error: msgspec.ValidationError) -> str:
    """msgspec's message with the values it quotes left out: an organiser may paste a secret
    into the wrong field, and this message is logged and printed."""
    return _QUOTED.sub("(value not shown)", str(error))


def _event(slug: str, given: EventConfig) -> EventConfig:
    """The event as configured, checked: its secrets in one list, header names lowercased."""
    if not SLUG_PATTERN.match(slug):
        raise ConfigError(
            f"JTE event slug {slug!r} must be lowercase letters, digits, '-' or '_' (max 64)"
        )
    configured = (*given.secrets, *([given.secret] if given.secret else []))
    if zone(given.timezone) is None:
        raise ConfigError(
            f"JTE event {slug!r}: timezone {given.timezone[:64]!r} is not an IANA time zone "
            "(for example Europe/Warsaw or UTC)"
        )
    for secret in configured:
        _check_secret(slug, given.mode, secret)
    return msgspec.structs.replace(
        given,
        slug=slug,
        secrets=configured,
        secret=None,
        token_header=_header_name(given.token_header),
        signature_header=_header_name(given.signature_header),
        timestamp_header=_optional_header(given.timestamp_header),
        delivery_id_header=_optional_header(given.delivery_id_header),
    )


def zone(name: str) -> ZoneInfo | None:
    """The IANA time zone `name` (as `Europe/Warsaw`), or None if there is no such zone."""
    if not name or len(name) > 64 or name != name.strip() or "\x00" in name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _header_name(name: str) -> str:
    # HTTP header names are case-insensitive; intake looks them up lowercased.
    return name.strip().lower()


def _optional_header(name: str | None) -> str | None:
    return _header_name(name) if name else None


def _check_secret(slug: str, mode: str, secret: str) -> None:
    # The message names the event, never the secret.
    if not secret:
        raise ConfigError(f"JTE event {slug!r}: an empty secret is not allowed")
    if mode == "standard-webhooks" and secret.startswith("whsec_"):
        try:
            base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ConfigError(
                f"JTE event {slug!r}: a whsec_ secret must be base64 after the prefix"
            ) from None


def _check_limits(settings: Settings) -> None:
    positive = (
        "body_limit",
        "batch_max",
        "batch_writers",
        "queue_max",
        "store_threads",
        "retry_after_seconds",
        "export_connections",
        "header_limit",
    )
    for name in positive:
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    timeouts = (
        settings.body_timeout,
        settings.store_timeout,
        settings.export_timeout,
        settings.export_stall,
        settings.header_timeout,
        settings.keep_alive,
    )
    if min(timeouts) <= 0 or settings.batch_linger_ms < 0:
        raise ConfigError("timeouts must be positive and the batch linger not negative")
    if settings.max_connections < 2:
        raise ConfigError("max_connections must be at least 2 (room is kept for health checks)")
    if settings.unverified_body_memory < settings.body_limit:
        raise ConfigError("unverified_body_memory must be at least body_limit")


class EventsWatcher:
    """The JTE events of the TOML file, re-read when the file changes (checked at most once a
    second): a secret can be added or retired without a restart. A file that no longer
    parses is ignored, and the events in force stay as they were."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self._environ = dict(os.environ if environ is None else environ)
        self._path = settings.config
        self._data_dir = settings.data_dir
        self.events = settings.events
        self._checked = 0.0
        self._stamp = self._stamp_now()
        self._listeners: list[Callable[[dict[str, EventConfig]], None]] = []

    def on_reload(self, listener: Callable[[dict[str, EventConfig]], None]) -> None:
        """Call `listener` with the events each time a changed file is read (from whatever
        thread reads it)."""
        self._listeners.append(listener)

    def event(self, slug: str) -> EventConfig | None:
        self._maybe_reload()
        return self.events.get(slug)

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        stamp = self._stamp_now()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            settings = ensure_secrets(load_settings(self._environ))
        except (ConfigError, OSError) as error:
            log.error("configuration not reloaded, keeping the events in force: %s", error)
            return
        self.events = settings.events
        log.info("configuration reloaded: events %s", ", ".join(self.events))
        for listener in self._listeners:
            listener(self.events)

    def _stamp_now(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self._path) if self._path else None
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size) if stat else None
