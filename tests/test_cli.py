"""`rollcall serve` and `rollcall secret` as real processes: restarts, kills, embedded default."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from service.eventstore.store import DeliveryStore
from tests.helpers import (
    SECRET,
    answers_then_idle,
    delivery,
    recorded,
    stored_rows,
    token_headers,
)

ROLLCALL = [sys.executable, "-m", "service.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """A `rollcall serve` process with its own log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*ROLLCALL, "serve", "--port", str(self.port)], env=env, stdout=out, stderr=out
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rollcall serve exited:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"rollcall serve not ready:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLCALL_", "DATABASE_URL"))}
    # The session's master key, so that this process can read what the child stores.
    env["ROLLCALL_MASTER_KEY"] = os.environ["ROLLCALL_MASTER_KEY"]
    env.update(ROLLCALL_DATA_DIR=str(tmp_path / "data"), **extra)
    return env


def post_all(url: str, bodies: list[bytes], secret: str = SECRET) -> list[dict[str, object]]:
    with httpx.Client(base_url=url, timeout=30) as client:
        return [
            client.post("/webhooks/jte", content=b, headers=token_headers(secret)).json()
            for b in bodies
        ]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_restart_loses_nothing(tmp_path: Path, database_url: str, stop_signal: int) -> None:
    env = child_env(tmp_path, DATABASE_URL=database_url, ROLLCALL_SECRET=SECRET)
    bodies = [delivery("AttendeeCheckedIn", attendee_id=f"a-{i}") for i in range(20)]
    first = Serve(env, tmp_path / "serve.log")
    answers = post_all(first.url, bodies)
    assert [a["status"] for a in answers] == ["accepted"] * 20
    code = first.stop(stop_signal)
    assert code == (0 if stop_signal == signal.SIGTERM else -signal.SIGKILL)

    second = Serve(env, tmp_path / "serve.log")
    try:
        assert [a["status"] for a in post_all(second.url, bodies)] == ["duplicate"] * 20
        (late,) = post_all(second.url, [delivery("AttendeeCheckedOut", attendee_id="a-0")])
        assert late["status"] == "accepted"
        assert int(late["position"]) > max(int(a["position"]) for a in answers)  # type: ignore[call-overload]
    finally:
        second.stop()
    assert len(stored_rows(database_url)) == 21
    assert SECRET not in (tmp_path / "serve.log").read_text()


def test_serve_keeps_an_idle_connection_for_its_keep_alive(
    tmp_path: Path, database_url: str
) -> None:
    env = child_env(tmp_path, DATABASE_URL=database_url, ROLLCALL_KEEP_ALIVE="2")
    serve = Serve(env, tmp_path / "serve.log")
    try:
        ready = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
        answers, closed_after = answers_then_idle(serve.url, [ready, ready], 0.5)
    finally:
        serve.stop()
    assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"200"]
    assert 1.0 < closed_after < 4.5  # 2 s, not uvicorn's 5 s nor the default's 130 s


def test_embedded_default_generates_a_secret_keeps_data_and_stops_cleanly(tmp_path: Path) -> None:
    env = child_env(tmp_path)
    secret = subprocess.run(
        [*ROLLCALL, "secret"], env=env, capture_output=True, text=True, check=True
    )
    generated = secret.stdout.strip()
    assert len(generated) >= 32
    secret_file = tmp_path / "data" / "secrets" / "default"
    assert secret_file.stat().st_mode & 0o777 == 0o600

    serve = Serve(env, tmp_path / "serve.log")
    body = delivery(delivery_id="embedded-1")
    try:
        assert post_all(serve.url, [body], generated)[0]["status"] == "accepted"
        # Set up for two roles by itself: serving as the runtime role, which owns no table
        # of the event store.
        socket = tmp_path / "data" / "postgres"
        with psycopg.connect(f"postgresql://postgres@/rollcall?host={socket}") as conn:
            users = conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = 'rollcall' "
                "AND pid <> pg_backend_pid()"
            ).fetchall()
            owner = conn.execute(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'deliveries_events'"
            ).fetchone()
        assert users == [("rollcall_app",)] and owner == ("rollcall_owner",)
        assert post_all(serve.url, [body], "wrong")[0] == {
            "error": "unauthorized",
            "message": "secret does not match",
        }
    finally:
        assert serve.stop() == 0
    assert not (tmp_path / "data" / "postgres" / "postmaster.pid").exists(), (
        "embedded server left running"
    )

    again = Serve(env, tmp_path / "serve.log")
    try:
        assert post_all(again.url, [body], generated)[0] == {"status": "duplicate"}
    finally:
        again.stop()
    log = (tmp_path / "serve.log").read_text()
    assert generated not in log
    assert "embedded PostgreSQL stopped" in log


def test_secret_for_unknown_event_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ROLLCALL, "secret", "nope"], env=child_env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "no JTE event 'nope'" in result.stderr


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "rollcall.toml"
    config.write_text('[events."Bad Slug"]\nsecrets = ["s3cret-value"]\n')
    env = child_env(tmp_path, ROLLCALL_CONFIG=str(config))
    result = subprocess.run([*ROLLCALL, "secret"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "Bad Slug" in result.stderr
    assert "s3cret-value" not in result.stderr


def test_as_of_schemas_are_listed_and_dropped_from_the_command_line(
    tmp_path: Path, database_url: str
) -> None:
    env = child_env(tmp_path, DATABASE_URL=database_url)
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(delivery("AttendeeCheckedIn", "a-1"))])
    finally:
        store.close()
    built = subprocess.run(
        [*ROLLCALL, "rebuild", "occupancy", "--as-of", "2099-01-01T00:00:00Z"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    listed = subprocess.run(
        [*ROLLCALL, "as-of", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert json.loads(listed.stdout) == [
        {
            "schema": "analytics_as_of_20990101t000000z",
            "as_of": "2099-01-01T00:00:00Z",
            "views": ["occupancy"],
        }
    ]
    dropped = subprocess.run(
        [*ROLLCALL, "as-of", "drop", "2099-01-01T00:00:00Z"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (dropped.returncode, dropped.stdout) == (
        0,
        "dropped analytics_as_of_20990101t000000z (occupancy)\n",
    )
    again = subprocess.run(
        [*ROLLCALL, "as-of", "drop", "analytics_as_of_20990101t000000z"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 1 and "no as-of schema" in again.stderr
    listed = subprocess.run([*ROLLCALL, "as-of", "list"], env=env, capture_output=True, text=True)
    assert (listed.returncode, listed.stdout) == (0, "")
