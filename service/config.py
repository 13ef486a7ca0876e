"""Settings: environment variables for the one-event quick start, a TOML file for several.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

Mode = Literal["default", "token", "hmac-sha256", "standard-webhooks"]
MODES: Final = ("default", "token", "hmac-sha256", "standard-webhooks")
DEFAULT_SLUG: Final = "default"
SLUG_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

log = logging.getLogger("rollcall.config")


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to fix."""


class EventConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How deliveries for one JTE event (conference) are verified and identified."""

    slug: str
    mode: Mode = "default"
    # Several secrets may be active at once, so a secret can be rotated without downtime.
    secrets: tuple[str, ...] = ()
    token_header: str = "x-webhook-secret"  # noqa: S105 - a header name
    signature_header: str = "x-webhook-signature"
    # When set, the HMAC covers "{timestamp}.{body}" and the timestamp must be fresh.
    timestamp_header: str | None = None
    # A header carrying a delivery id that stays the same across JTE's retries.
    delivery_id_header: str | None = None
    tolerance_seconds: int = 300


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service needs, resolved from the environment and the optional TOML file."""

    data_dir: Path
    database_url: str | None
    events: dict[str, EventConfig]
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
    # Requests in progress at most, per process (uvicorn's limit_concurrency).
    max_connections: int = 2048
    # Bytes of bodies still unverified (signed over the body) held at once, per process.
    unverified_body_memory: int = 32 * 1024 * 1024
    # CSV exports (service/exports.py): at once, whole-export deadline, longest client stall.
    export_connections: int = 4
    export_timeout: float = 600.0
    export_stall: float = 60.0

    def event(self, slug: str) -> EventConfig | None:
        return self.events.get(slug)


class _IntakeSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    body_limit: int | None = None
    body_timeout: float | None = None
    retry_after_seconds: int | None = None
    group_commit: bool | None = None
    batch_max: int | None = None
    batch_linger_ms: float | None = None
    batch_writers: int | None = None
    queue_max: int | None = None
    store_threads: int | None = None
    store_timeout: float | None = None
    projections: bool | None = None
    max_connections: int | None = None
    unverified_body_memory: int | None = None


class _EventSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mode: Mode = "default"
    secrets: list[str] = []
    secret: str | None = None
    token_header: str = "x-webhook-secret"  # noqa: S105 - a header name
    signature_header: str = "x-webhook-signature"
    timestamp_header: str | None = None
    delivery_id_header: str | None = None
    tolerance_seconds: int = 300


class _ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    intake: _IntakeSection = _IntakeSection()
    events: dict[str, _EventSection] = {}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from the environment and the TOML file ROLLCALL_CONFIG may name."""
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("ROLLCALL_DATA_DIR") or ".rollcall").expanduser().resolve()
    database_url = env.get("DATABASE_URL") or None
    config_path = env.get("ROLLCALL_CONFIG")
    if config_path:
        file = _read_config_file(Path(config_path))
        events = {slug: _event_from_section(slug, section) for slug, section in file.events.items()}
        intake = {k: v for k, v in msgspec.structs.asdict(file.intake).items() if v is not None}
    else:
        events = {DEFAULT_SLUG: _default_event_from_env(env)}
        intake = {}
    intake.update(_intake_from_env(env))
    settings = Settings(data_dir=data_dir, database_url=database_url, events=events, **intake)
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


def _read_config_file(path: Path) -> _ConfigFile:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"ROLLCALL_CONFIG names {path}, which does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    try:
        return msgspec.convert(raw, _ConfigFile)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{path}: {error}") from None


def _event_from_section(slug: str, section: _EventSection) -> EventConfig:
    if not SLUG_PATTERN.match(slug):
        raise ConfigError(
            f"JTE event slug {slug!r} must be lowercase letters, digits, '-' or '_' (max 64)"
        )
    configured = [*section.secrets, *([section.secret] if section.secret else [])]
    for secret in configured:
        _check_secret(slug, section.mode, secret)
    return EventConfig(
        slug=slug,
        mode=section.mode,
        secrets=tuple(configured),
        token_header=_header_name(section.token_header),
        signature_header=_header_name(section.signature_header),
        timestamp_header=_optional_header(section.timestamp_header),
        delivery_id_header=_optional_header(section.delivery_id_header),
        tolerance_seconds=section.tolerance_seconds,
    )


def _header_name(name: str) -> str:
    # HTTP header names are case-insensitive; intake looks them up lowercased.
    return name.strip().lower()


def _optional_header(name: str | None) -> str | None:
    return _header_name(name) if name else None


def _default_event_from_env(env: Mapping[str, str]) -> EventConfig:
    mode = env.get("ROLLCALL_VERIFY_MODE") or "default"
    if mode not in MODES:
        raise ConfigError(f"ROLLCALL_VERIFY_MODE must be one of {', '.join(MODES)}")
    section = _EventSection(
        mode=mode,  # type: ignore[arg-type]
        secret=env.get("ROLLCALL_SECRET") or None,
        token_header=env.get("ROLLCALL_TOKEN_HEADER") or "x-webhook-secret",
        signature_header=env.get("ROLLCALL_SIGNATURE_HEADER") or "x-webhook-signature",
        timestamp_header=env.get("ROLLCALL_TIMESTAMP_HEADER") or None,
        delivery_id_header=env.get("ROLLCALL_DELIVERY_ID_HEADER") or None,
    )
    return _event_from_section(DEFAULT_SLUG, section)


_ENV_INTAKE: Final[dict[str, tuple[str, type]]] = {
    "ROLLCALL_BODY_LIMIT": ("body_limit", int),
    "ROLLCALL_BODY_TIMEOUT": ("body_timeout", float),
    "ROLLCALL_GROUP_COMMIT": ("group_commit", bool),
    "ROLLCALL_BATCH_MAX": ("batch_max", int),
    "ROLLCALL_BATCH_LINGER_MS": ("batch_linger_ms", float),
    "ROLLCALL_BATCH_WRITERS": ("batch_writers", int),
    "ROLLCALL_QUEUE_MAX": ("queue_max", int),
    "ROLLCALL_STORE_THREADS": ("store_threads", int),
    "ROLLCALL_STORE_TIMEOUT": ("store_timeout", float),
    "ROLLCALL_PROJECTIONS": ("projections", bool),
    "ROLLCALL_MAX_CONNECTIONS": ("max_connections", int),
    "ROLLCALL_UNVERIFIED_BODY_MEMORY": ("unverified_body_memory", int),
    "ROLLCALL_EXPORT_CONNECTIONS": ("export_connections", int),
    "ROLLCALL_EXPORT_TIMEOUT": ("export_timeout", float),
    "ROLLCALL_EXPORT_STALL": ("export_stall", float),
}


def _intake_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for variable, (field, kind) in _ENV_INTAKE.items():
        text = env.get(variable)
        if not text:
            continue
        try:
            values[field] = _parse_flag(text) if kind is bool else kind(text)
        except ValueError:
            raise ConfigError(f"{variable}={text!r} is not a valid {kind.__name__}") from None
    return values


def _parse_flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


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
    )
    for name in positive:
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    timeouts = (
        settings.body_timeout,
        settings.store_timeout,
        settings.export_timeout,
        settings.export_stall,
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
        self._path = self._environ.get("ROLLCALL_CONFIG")
        self._data_dir = settings.data_dir
        self.events = settings.events
        self._checked = 0.0
        self._stamp = self._stamp_now()

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

    def _stamp_now(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self._path) if self._path else None
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size) if stat else None
