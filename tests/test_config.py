"""Settings from the environment and TOML, and the generated secret."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.config import ConfigError, ensure_secrets, generated_secret, load_settings


def test_quick_start_needs_nothing(tmp_path: Path) -> None:
    settings = load_settings({"ROLLCALL_DATA_DIR": str(tmp_path)})
    assert list(settings.events) == ["default"]
    assert settings.database_url is None
    assert settings.events["default"].mode == "default"
    assert settings.events["default"].secrets == ()
    with_secret = ensure_secrets(settings)
    (secret,) = with_secret.events["default"].secrets
    assert (tmp_path / "secrets" / "default").read_text().strip() == secret
    assert (tmp_path / "secrets" / "default").stat().st_mode & 0o777 == 0o600
    # Stable across restarts.
    assert ensure_secrets(settings).events["default"].secrets == (secret,)


def test_environment_overrides(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "ROLLCALL_DATA_DIR": str(tmp_path),
            "DATABASE_URL": "postgresql://u@h/db",
            "ROLLCALL_SECRET": "chosen by the organiser",
            "ROLLCALL_VERIFY_MODE": "hmac-sha256",
            "ROLLCALL_SIGNATURE_HEADER": "X-JTE-Signature",
            "ROLLCALL_BODY_LIMIT": "2048",
            "ROLLCALL_GROUP_COMMIT": "off",
            "ROLLCALL_MAX_CONNECTIONS": "64",
            "ROLLCALL_UNVERIFIED_BODY_MEMORY": "4096",
        }
    )
    event = settings.events["default"]
    assert (event.mode, event.secrets, event.signature_header) == (
        "hmac-sha256",
        ("chosen by the organiser",),
        "x-jte-signature",
    )
    assert settings.body_limit == 2048
    assert (settings.max_connections, settings.unverified_body_memory) == (64, 4096)
    assert settings.group_commit is False
    assert settings.database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ROLLCALL_MAX_CONNECTIONS": "1"}, "max_connections must be at least 2"),
        (
            {"ROLLCALL_BODY_LIMIT": "2048", "ROLLCALL_UNVERIFIED_BODY_MEMORY": "2047"},
            "unverified_body_memory must be at least body_limit",
        ),
    ],
)
def test_limits_that_leave_no_room_are_refused(
    tmp_path: Path, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({"ROLLCALL_DATA_DIR": str(tmp_path), **values})


def test_the_export_budget_comes_from_the_environment(tmp_path: Path) -> None:
    defaults = load_settings({"ROLLCALL_DATA_DIR": str(tmp_path)})
    assert (defaults.export_connections, defaults.export_timeout, defaults.export_stall) == (
        4,
        600.0,
        60.0,
    )
    settings = load_settings(
        {
            "ROLLCALL_DATA_DIR": str(tmp_path),
            "ROLLCALL_EXPORT_CONNECTIONS": "2",
            "ROLLCALL_EXPORT_TIMEOUT": "1800",
            "ROLLCALL_EXPORT_STALL": "15",
        }
    )
    assert (settings.export_connections, settings.export_timeout, settings.export_stall) == (
        2,
        1800.0,
        15.0,
    )
    for variable, value in (
        ("ROLLCALL_EXPORT_CONNECTIONS", "0"),
        ("ROLLCALL_EXPORT_TIMEOUT", "0"),
        ("ROLLCALL_EXPORT_STALL", "-1"),
        ("ROLLCALL_EXPORT_CONNECTIONS", "many"),
    ):
        with pytest.raises(ConfigError):
            load_settings({"ROLLCALL_DATA_DIR": str(tmp_path), variable: value})


def test_toml_with_several_events(tmp_path: Path) -> None:
    config = tmp_path / "rollcall.toml"
    config.write_text(
        """
[intake]
body_limit = 4096

[events.spring-conf]
mode = "hmac-sha256"
secrets = ["new-secret", "old-secret"]
signature_header = "X-Hub-Signature-256"
timestamp_header = "X-Timestamp"

[events.autumn]
mode = "token"
secret = "autumn-secret"
token_header = "X-JTE-Secret"
delivery_id_header = "X-Delivery-Id"

[events.generated]
mode = "standard-webhooks"
"""
    )
    settings = load_settings({"ROLLCALL_CONFIG": str(config), "ROLLCALL_DATA_DIR": str(tmp_path)})
    assert set(settings.events) == {"spring-conf", "autumn", "generated"}
    spring = settings.events["spring-conf"]
    assert spring.secrets == ("new-secret", "old-secret")
    assert (spring.signature_header, spring.timestamp_header) == (
        "x-hub-signature-256",
        "x-timestamp",
    )
    autumn = settings.events["autumn"]
    assert (autumn.secrets, autumn.token_header, autumn.delivery_id_header) == (
        ("autumn-secret",),
        "x-jte-secret",
        "x-delivery-id",
    )
    assert settings.body_limit == 4096
    generated = ensure_secrets(settings).events["generated"].secrets[0]
    assert generated.startswith("whsec_")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[events."Has Spaces"]\nsecret = "x-secret-1"\n', "Has Spaces"),
        ('[events.a]\nmode = "md5"\nsecret = "x-secret-1"\n', "mode"),
        ('[events.a]\nsecrt = "x-secret-1"\n', "secrt"),
        ('[events.a]\nsecrets = [""]\n', "empty secret"),
        ("[intake]\nbody_limit = 0\n", "body_limit"),
        ("not toml at all [", "cannot read"),
    ],
)
def test_bad_toml_is_a_clear_error_that_names_no_secret(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "rollcall.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings({"ROLLCALL_CONFIG": str(config)})
    assert "x-secret-1" not in str(caught.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"ROLLCALL_CONFIG": str(tmp_path / "absent.toml")})


def test_concurrent_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        secrets = set(
            pool.map(lambda _: generated_secret(tmp_path, "default", "default"), range(32))
        )
    assert len(secrets) == 1
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["default"]
