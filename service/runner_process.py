"""The live projection runner in a supervised child process, out of intake's event loop.

`rollcall serve` (each worker) starts one child running projections.runner.Runner: it folds in
its own interpreter, so the GIL it holds while folding is not intake's. The parent restarts a
child that dies (with backoff), and stops it with the server. A child whose parent died is
killed outright, as the thread runner dies with a killed server (PR_SET_PDEATHSIG with SIGKILL,
and a check of its parent's pid for the moment before that is set): a child asked to stop
politely could sit in a statement that waits on a lock, holding its views' locks with no server
above it, and no other runner could take them over. Its open batch is rolled back with its
connection, as any batch of a killed runner is. Across workers and replicas the runner's
advisory locks keep one active runner per view.

Run as `python -m service.runner_process` by the supervisor only: it reads DATABASE_URL and the
supervisor's variables below from its environment.
"""

from __future__ import annotations

import ctypes
import logging
import logging.config
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Final

log = logging.getLogger("rollcall.projections")

_PARENT: Final = "ROLLCALL_RUNNER_PARENT"
_LOG_LEVEL: Final = "ROLLCALL_RUNNER_LOG_LEVEL"
_LOG_FORMAT: Final = "ROLLCALL_RUNNER_LOG_FORMAT"
_BACKOFF_FIRST: Final = 0.5
_BACKOFF_MAX: Final = 5.0
_HEALTHY_AFTER: Final = 30.0  # a child that ran this long starts the backoff over when it dies
_STOP_TIMEOUT: Final = 10.0
_PR_SET_PDEATHSIG: Final = 1


class RunnerProcess:
    """Starts the runner's child process, restarts it when it dies, stops it on `stop`."""

    def __init__(self, database_url: str, *, log_format: str = "text") -> None:
        self._env = {
            **os.environ,
            "DATABASE_URL": database_url,
            _PARENT: str(os.getpid()),
            _LOG_LEVEL: logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            _LOG_FORMAT: log_format,
        }
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0  # children started so far, for tests and logs
        self._thread = threading.Thread(target=self._supervise, name="runner-supervisor")
        self._thread.daemon = True
        self._thread.start()

    @property
    def pid(self) -> int | None:
        """The running child's pid (None between a death and its restart)."""
        with self._lock:
            process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def stop(self) -> None:
        """Stop the child (SIGTERM; SIGKILL if it does not end in time) and the supervision."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            _end(process)
        self._thread.join(timeout=_STOP_TIMEOUT + 5)

    def _supervise(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                # Its own module, run by this interpreter: the child imports only what it needs.
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "service.runner_process"],
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                )
                process = self._process
                self.starts += 1
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > _HEALTHY_AFTER:
                backoff = _BACKOFF_FIRST
            log.warning(
                "projection runner process %d exited (%d); restarting in %.1fs",
                process.pid,
                code,
                backoff,
            )
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, _BACKOFF_MAX)


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("projection runner process %d did not stop; killing it", process.pid)
        process.kill()
        process.wait()


def main() -> int:
    """The child: run the live views until SIGTERM, or until the parent is gone."""
    parent = int(os.environ.get(_PARENT, "0"))
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the parent decides when its child stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Set from another thread: the handler runs in the main thread, which may hold the event's
    # own (non-reentrant) lock at that moment, inside stop.wait().
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=stop.set).start())
    _die_with_parent()
    from service.http.logs import logging_config  # after the signals: imports take a while

    logging.config.dictConfig(
        logging_config(
            os.environ.get(_LOG_LEVEL, "INFO").lower(),
            "json" if os.environ.get(_LOG_FORMAT) == "json" else "text",
        )
    )
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        log.error("the projection runner process needs DATABASE_URL")
        return 2

    def watch_parent() -> None:
        # Covers a parent that died before PR_SET_PDEATHSIG was set, and other platforms.
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("the server that started this projection runner is gone; exiting")
                os._exit(0)  # at once, as PR_SET_PDEATHSIG's SIGKILL would (see above)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:
        return 0
    from projections.runner import Runner
    from service.eventstore.source import SOURCE

    log.info("projection runner process %d started", os.getpid())
    Runner(database_url, SOURCE).run(stop)
    return 0


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that started it (the supervisor) ends."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the parent-pid check covers it


if __name__ == "__main__":
    sys.exit(main())
