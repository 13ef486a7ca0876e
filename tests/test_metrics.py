"""/metrics of a real `rollcall serve --workers N`: every scrape sums all workers, counters never
go down (not even when a worker is killed), and they end equal to what was sent."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import grafana
from tests.helpers import SECRET, delivery, token_headers, wait_until
from tests.test_cli import ROLLCALL, child_env, free_port

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Series:
    """One scrape on a new connection (so any worker may answer it), every sample by name+labels."""
    text = httpx.get(url + "/metrics", timeout=10, headers={"connection": "close"}).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def counters(series: Series, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in series.items() if sample == name}


class Server:
    def __init__(self, tmp_path: Path, database_url: str, workers: int) -> None:
        config = tmp_path / "rollcall.toml"
        config.write_text(
            f'[events.alpha]\nmode = "token"\nsecret = "{SECRET}"\n\n'
            f'[events.beta]\nmode = "token"\nsecret = "{SECRET}"\n'
        )
        env = child_env(tmp_path, DATABASE_URL=database_url, ROLLCALL_CONFIG=str(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        self.data_dir = Path(env["ROLLCALL_DATA_DIR"])
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*ROLLCALL, "serve", "--port", str(self.port), "--workers", str(workers)],
                env=env,
                stdout=out,
                stderr=out,
            )
        wait_until(self._ready, timeout=90)
        wait_until(lambda: self.workers() == workers, timeout=90)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"rollcall serve exited:\n{self.log.read_text()}")
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def workers(self) -> int:
        return int(scrape(self.url).get(("rollcall_workers", ()), 0))

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(p) for p in children.read_text().split()]
        return [p for p in pids if b"resource_tracker" not in _cmdline(p)]

    def gone(self, pid: int) -> bool:
        return pid not in self.worker_pids()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def post(url: str, path: str, body: bytes, headers: httpx.Headers) -> int:
    headers["connection"] = "close"  # a new connection each: the workers share the deliveries
    return httpx.post(url + path, content=body, headers=headers, timeout=30).status_code


@pytest.mark.parametrize("workers", [2, 4])
def test_counters_sum_all_workers_and_never_go_down(
    tmp_path: Path, database_url: str, workers: int
) -> None:
    server = Server(tmp_path, database_url, workers)
    sent: Counter[tuple[str, str]] = Counter()
    refused: Counter[str] = Counter()
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def check_scrapes() -> None:
        for _ in range(workers + 1):
            series = scrape(server.url)
            for key, value in series.items():
                name = key[0]
                if name.endswith("_total") or name.endswith(("_count", "_sum", "_bucket")):
                    assert value >= seen.get(key, 0), (key, value, seen.get(key))
                    seen[key] = value

    try:
        for round_ in range(6):
            for event in ("alpha", "beta"):
                path = f"/webhooks/jte/{event}"
                body = delivery(attendee_id=f"{event}-{round_}", delivery_id=f"{event}-{round_}")
                assert post(server.url, path, body, token_headers()) == 200
                assert post(server.url, path, body, token_headers()) == 200
                sent[(event, "accepted")] += 1
                sent[(event, "duplicate")] += 1
                unreadable = b'{"event": "Nope", "n": %d}' % round_
                assert post(server.url, path, unreadable, token_headers()) == 202
                sent[(event, "quarantined")] += 1
                assert post(server.url, path, body, token_headers("wrong")) == 401
                sent[(event, "unauthorized")] += 1
                refused["secret_mismatch"] += 1
                plain = httpx.Headers({"content-type": "application/json"})
                assert post(server.url, path, body, plain) == 401
                sent[(event, "unauthorized")] += 1
                refused["no_secret_header"] += 1
            assert post(server.url, "/webhooks/jte/nobody", b"{}", token_headers()) == 404
            sent[("other", "unknown_event")] += 1
            refused["unknown_event"] += 1
            check_scrapes()
            if round_ == 2:
                # A worker killed outright: its counts stay, and the supervisor replaces it.
                victim = server.worker_pids()[0]
                os.kill(victim, signal.SIGKILL)
                wait_until(functools.partial(server.gone, victim), timeout=30)
                wait_until(lambda: server.workers() == workers, timeout=60)
                check_scrapes()

        final = scrape(server.url)
        deliveries = counters(final, "rollcall_deliveries_total")
        assert {
            (dict(labels)["event"], dict(labels)["outcome"]): value
            for labels, value in deliveries.items()
        } == dict(sent)
        rejections = counters(final, "rollcall_rejections_total")
        assert {dict(labels)["reason"]: value for labels, value in rejections.items()} == dict(
            refused
        )
        assert final[("rollcall_batch_size_count", ())] >= 1
        assert final[("rollcall_quarantined_deliveries", ())] == 12
        for event in ("alpha", "beta"):
            last = final[("rollcall_last_delivery_timestamp_seconds", (("event", event),))]
            assert time.time() - 120 < last <= time.time()
        assert ("rollcall_intake_queue_depth", ()) in final
        assert any(name == "rollcall_build_info" for name, _ in final)
        assert final[("rollcall_projection_dead_letters", (("view", "roster"),))] >= 0
        # Every rollcall metric the Grafana dashboard draws is one this server exposes.
        exposed = {name for name, _ in final}
        drawn = {
            name
            for expr in grafana.expressions()
            for name in re.findall(r"\brollcall_[a-z_]+", expr)
        }
        assert drawn - exposed == set()
    finally:
        server.stop()
    # The run's metrics directory is per run: the next start begins from zero.
    assert list((server.data_dir / "metrics").iterdir())


def test_api_duration_by_route_template(tmp_path: Path, database_url: str) -> None:
    server = Server(tmp_path, database_url, 2)
    try:
        for _ in range(3):
            httpx.get(server.url + "/v1/events/alpha/roster", timeout=10)  # 401: no token
        httpx.get(server.url + "/no/such/page", timeout=10)
        series = scrape(server.url)
        durations = counters(series, "rollcall_http_request_duration_seconds_count")
        by_route = {
            (dict(labels)["route"], dict(labels)["status"]): value
            for labels, value in durations.items()
        }
        assert by_route[("/v1/events/{event}/roster", "401")] == 3
        assert by_route[("unmatched", "404")] == 1
    finally:
        server.stop()
