"""Commands against an empty, unreachable or wrong database: one clear line, a non-zero exit.
And `rollcall db setup` as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from service.eventstore.database import with_database
from service.eventstore.roles import role_name
from service.eventstore.store import DeliveryStore
from tests.helpers import drop_roles

ROLLCALL = [sys.executable, "-m", "service.cli"]
NEEDS_A_STORE = [
    ["status"],
    ["rebuild", "all"],
    ["replay"],
    ["token", "--scope", "read"],
    ["grant-analyst", "nobody_at_all"],
]


def rollcall(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url}
    env["ROLLCALL_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [*ROLLCALL, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rollcall: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("command", NEEDS_A_STORE, ids=[c[0] for c in NEEDS_A_STORE])
def test_a_command_on_an_empty_database_says_so(
    tmp_path: Path, database_url: str, command: list[str]
) -> None:
    line = one_line(rollcall(tmp_path, database_url, *command))
    assert "has no rollcall event store" in line
    with psycopg.connect(database_url) as conn:  # and it created nothing there
        assert conn.execute("SELECT to_regnamespace('rollcall')").fetchone() == (None,)


@pytest.mark.parametrize("command", [["status"], ["project"], ["db", "setup"]])
def test_an_unreachable_server_is_one_line(tmp_path: Path, command: list[str]) -> None:
    line = one_line(rollcall(tmp_path, "postgresql://root@127.0.0.1:1/rollcall", *command))
    assert "cannot connect to postgresql://root@127.0.0.1:1/rollcall" in line


def test_a_database_that_does_not_exist_is_one_line(tmp_path: Path, server_url: str) -> None:
    line = one_line(rollcall(tmp_path, with_database(server_url, "no_such_db_here"), "status"))
    assert 'database "no_such_db_here" does not exist' in line


def test_db_setup_prints_the_runtime_url_and_only_it_serves(
    tmp_path: Path, server_url: str, database_url: str
) -> None:
    database = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    roles = [role_name(database, p) for p in ("owner", "runtime", "analysts")]
    try:
        setup = rollcall(tmp_path, database_url, "db", "setup")
        assert setup.returncode == 0, setup.stderr
        [line] = setup.stdout.splitlines()
        runtime_url = line.removeprefix("DATABASE_URL=")
        assert psycopg.conninfo.conninfo_to_dict(runtime_url)["user"] == roles[1]
        assert "password" in psycopg.conninfo.conninfo_to_dict(runtime_url)
        DeliveryStore(runtime_url).close()
        assert rollcall(tmp_path, runtime_url, "status").returncode == 0
        # What the superuser made in the views' schemas, the runtime role could not replace.
        for command in (["serve"], ["rebuild", "all"], ["project"]):
            line = one_line(rollcall(tmp_path, database_url, *command))
            assert "is set up for two roles" in line and roles[1] in line
        # And the runtime role cannot set roles up.
        assert "not a superuser" in one_line(rollcall(tmp_path, runtime_url, "db", "setup"))
    finally:
        drop_roles(server_url, [database_url], roles)
