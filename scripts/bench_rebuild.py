"""Rebuild benchmark against another commit: `rollcall rebuild all` over the same simulated
deliveries, stored by each commit's own code (sealed here, plaintext before encryption).

    .venv/bin/python scripts/bench_rebuild.py --against 95d5eaf [--events 100000] [--rounds 2]

Each commit (this checkout, and REF exported with `git archive`, both run with this venv) fills
a fresh database of its own, then rebuilds it in ABBA order, `rounds` times each. With
`--one-store`, this checkout fills one database and both commits rebuild it: for commits that
store deliveries alike, it takes the databases' own differences (their layout on disk, their
autovacuum) out of the ratio. Prints, per
commit, the median wall time, events/s, and the rebuild process's CPU per event (user + system,
which other load on the machine disturbs less than wall time), and the ratios. Uses
DATABASE_URL's server (required). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service.eventstore.database import drop_database, new_database
from service.eventstore.keys import generate_master_key

ROOT = Path(__file__).resolve().parent.parent

_FILL = r"""
import sys, time
from service.config import EventConfig
from service.eventstore.store import DeliveryStore
from service.http.intake import delivery_record
from service.jte.signing import sign
from service.jte.simulator import SimulationOptions, simulate

url, target = sys.argv[1], int(sys.argv[2])
store = DeliveryStore(url)
appended, seed = 0, 1
while appended < target:
    event = EventConfig(slug=f"conference-{seed}", secrets=("bench-secret",))
    day = simulate(SimulationOptions(seed=seed, attendees=20_000))
    records = []
    for d in day:
        if d.expect != "accepted":
            continue
        headers = {k: v.encode("latin-1") for k, v in sign(event, d.body, now=time.time()).items()}
        records.append(delivery_record(event, headers, d.body, "hmac-sha256"))
    records = records[: target - appended]
    for start in range(0, len(records), 1000):
        appended += sum(p is not None for p in store.append(records[start : start + 1000]))
    seed += 1
store.close()
print(appended)
"""


def _tree(ref: str, work: Path) -> Path:
    target = work / f"tree-{ref}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def _env(tree: Path, database_url: str, work: Path, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLCALL_", "DATABASE_"))}
    env.update(
        PYTHONPATH=str(tree),
        DATABASE_URL=database_url,
        ROLLCALL_DATA_DIR=str(work / "data"),
        ROLLCALL_MASTER_KEY=key,
    )
    return env


def _rebuild(tree: Path, env: dict[str, str], view: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one `rollcall rebuild VIEW`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "service.cli", "rebuild", view],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", required=True, help="the commit to compare with")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--view",
        default="all",
        help="the view to rebuild (default all; name one view both commits have to compare "
        "the same work when this checkout has views the other lacks)",
    )
    parser.add_argument(
        "--one-store",
        action="store_true",
        help="fill one database with this checkout and rebuild it with both commits (only for "
        "commits that store deliveries alike)",
    )
    args = parser.parse_args()
    admin = os.environ.get("DATABASE_URL")
    if not admin:
        sys.exit("set DATABASE_URL to a PostgreSQL server")
    key = generate_master_key()
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-") as tmp:
        work = Path(tmp)
        trees = {"this": ROOT, args.against: _tree(args.against, work)}
        if args.one_store:
            shared = new_database(admin, "bench_rebuild")
            urls = {name: shared for name in trees}
        else:
            urls = {name: new_database(admin, "bench_rebuild") for name in trees}
        try:
            for name, tree in trees.items():
                env = _env(tree, urls[name], work / name, key)
                if name == "this" or not args.one_store:
                    filled = subprocess.run(
                        [sys.executable, "-c", _FILL, urls[name], str(args.events)],
                        cwd=tree,
                        env=env,
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout.strip()
                    print(f"{name}: {filled} deliveries stored", flush=True)
                _rebuild(tree, env, args.view)  # warm: views created, caches filled
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
            order = ["this", args.against, args.against, "this"] * args.rounds
            for name in order:
                env = _env(trees[name], urls[name], work / name, key)
                results[name].append(_rebuild(trees[name], env, args.view))
                wall, cpu = results[name][-1]
                print(f"  {name}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
        finally:
            for url in set(urls.values()):
                drop_database(admin, url)
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        summary[name] = (wall, cpu)
        print(
            f"{name:>10}: median {wall:.2f} s ({args.events / wall:,.0f} events/s), "
            f"CPU {1e6 * cpu / args.events:.1f} µs/event"
        )
    this, other = summary["this"], summary[args.against]
    print(f"ratio this/{args.against}: wall {this[0] / other[0]:.3f}, CPU {this[1] / other[1]:.3f}")


if __name__ == "__main__":
    main()
