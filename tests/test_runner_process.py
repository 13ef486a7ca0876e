"""The live views' runner in a supervised child process (service/runner_process.py): with the
real server and the real `rollcall serve`, a killed child is restarted and the views catch up,
and stopping the server leaves no child behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from projections.registry import VIEW_NAMES
from projections.schema import LOCK_NAMESPACE, SWAP_LOCK
from service.runner_process import RunnerProcess
from tests.drill.faults import lock_holders
from tests.helpers import SECRET, RunningService, delivery, wait_until
from tests.test_cli import Serve, child_env, post_all


def runner_pids(database_url: str) -> set[int]:
    """The pids of the runners connected to this database (their application_name says)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'rollcall runner pid=%'"
        ).fetchall()
    return {int(name.removeprefix("rollcall runner pid=")) for (name,) in rows}


def roster_count(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM analytics.roster").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def parent_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after it.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0]
    except (FileNotFoundError, IndexError):
        return "gone"


def test_the_default_server_folds_in_a_child_that_is_restarted_when_killed(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    runner = service.app.state.runner
    assert isinstance(runner, RunnerProcess)
    wait_until(lambda: runner.pid is not None and runner.pid in runner_pids(database_url), 60)
    first = runner.pid
    assert first is not None and first != os.getpid()
    assert parent_of(first) == os.getpid()

    bodies = [delivery(attendee_id=f"a-{i}") for i in range(5)]
    assert [a["status"] for a in post_all(service.url, bodies)] == ["accepted"] * 5
    wait_until(lambda: roster_count(database_url) == 5, 30)

    os.kill(first, signal.SIGKILL)
    wait_until(lambda: runner.pid not in (None, first), 30)
    assert runner.starts == 2
    more = [delivery(attendee_id=f"b-{i}") for i in range(5)]
    assert [a["status"] for a in post_all(service.url, more)] == ["accepted"] * 5
    wait_until(lambda: roster_count(database_url) == 10, 60)
    second = runner.pid
    assert second is not None

    service.stop()
    assert runner.pid is None
    assert not alive(second)


def test_a_thread_or_no_runner_when_the_settings_say_so(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    threaded = start_service(projection_runner="thread")
    assert not isinstance(threaded.app.state.runner, RunnerProcess)
    (answer,) = post_all(threaded.url, [delivery(attendee_id="t-1")])
    assert answer["status"] == "accepted"
    wait_until(lambda: roster_count(database_url) == 1, 30)
    # The thread's runner connects from this very process.
    assert runner_pids(database_url) == {os.getpid()}

    off = start_service(projections=False)
    assert off.app.state.runner is None


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_rollcall_serve_leaves_no_runner_behind(
    tmp_path: Path, database_url: str, stop_signal: int
) -> None:
    env = child_env(
        tmp_path, DATABASE_URL=database_url, ROLLCALL_SECRET=SECRET,
        ROLLCALL_PROJECTION_RUNNER="process",
    )  # fmt: skip
    serve = Serve(env, tmp_path / "serve.log")
    try:
        wait_until(lambda: len(runner_pids(database_url)) == 1, 60)
        (child,) = runner_pids(database_url)
        assert parent_of(child) == serve.process.pid
        assert [a["status"] for a in post_all(serve.url, [delivery()])] == ["accepted"]
        wait_until(lambda: roster_count(database_url) == 1, 30)
    finally:
        serve.stop(stop_signal)
    if stop_signal == signal.SIGTERM:
        assert not alive(child)  # stopped and reaped before serve exited
    else:
        wait_until(lambda: not alive(child), 30)  # told by the kernel that its parent died
    wait_until(lambda: not runner_pids(database_url), 30)


def waiting_on_a_lock(database_url: str, pid: int) -> bool:
    """Whether runner `pid` has a statement waiting on a lock."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock'",
            (f"rollcall runner pid={pid}",),
        ).fetchone()
    return bool(row and row[0])


def test_a_killed_servers_child_lets_go_of_its_views_even_inside_a_statement(
    tmp_path: Path, database_url: str
) -> None:
    # The crash drill's stall (issue 13): a child asked to stop politely when its server was
    # killed kept waiting in a statement, holding every view's lock with no server above it, so
    # no other runner could take the views over. Here its batch waits on the swap lock (held as
    # a rebuild's swap holds it) when its server is killed.
    env = child_env(
        tmp_path, DATABASE_URL=database_url, ROLLCALL_SECRET=SECRET,
        ROLLCALL_PROJECTION_RUNNER="process",
    )  # fmt: skip
    first = Serve(env, tmp_path / "first.log")
    second: Serve | None = None
    try:
        wait_until(
            lambda: all(
                lock_holders(database_url).get(v) == [first.process.pid] for v in VIEW_NAMES
            ),
            60,
        )
        (child,) = runner_pids(database_url)
        with psycopg.connect(database_url, autocommit=True) as swap:
            swap.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, SWAP_LOCK))
            assert [a["status"] for a in post_all(first.url, [delivery()])] == ["accepted"]
            wait_until(lambda: waiting_on_a_lock(database_url, child), 30)
            second = Serve(env, tmp_path / "second.log")  # stands by: the views are taken
            first.stop(signal.SIGKILL)
            wait_until(lambda: not alive(child), 30)
            pid = second.process.pid
            wait_until(
                lambda: all(lock_holders(database_url).get(v) == [pid] for v in VIEW_NAMES), 60
            )
        # The swap lock let go: the batch the killed child never finished is applied once.
        wait_until(lambda: roster_count(database_url) == 1, 60)
    finally:
        for serve in (first, second):
            if serve is not None and serve.process.poll() is None:
                serve.stop()
