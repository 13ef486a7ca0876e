"""Import benchmark: `rollcall import` of a generated attendee list (CSV and XLSX) into a fresh
database; prints rows/s and the command's CPU per row.

    .venv/bin/python scripts/bench_import.py [--rows 20000]

Uses DATABASE_URL's server if set, else an embedded PostgreSQL. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

from openpyxl import Workbook

from service.cli.main import main as rollcall
from service.eventstore import keys
from service.eventstore.database import drop_database, new_database, server

HEADER = ["Id", "Imię", "Nazwisko", "E-mail", "Rozmiar koszulki", "Dieta"]


def _rows(count: int) -> list[list[str]]:
    return [
        [f"a-{i:06d}", "Zofia", f"Dąbrowska{i % 97}", f"p{i}@example.pl", "M", "wegańska"]
        for i in range(count)
    ]


def _run(path: Path, database_url: str, work: Path) -> tuple[float, float, str]:
    os.environ.update(DATABASE_URL=database_url, ROLLCALL_DATA_DIR=str(work / "cli"))
    os.environ.setdefault("ROLLCALL_SECRET", "bench")
    out = StringIO()
    started, cpu = time.perf_counter(), time.process_time()
    with redirect_stdout(out):
        code = rollcall(["--log-level", "warning", "import", str(path), "--operator", "bench"])
    if code != 0:
        raise SystemExit(f"import failed: {out.getvalue()}")
    return time.perf_counter() - started, time.process_time() - cpu, out.getvalue().strip()


def main() -> int:
    # This process seeds the store and starts rollcall processes: they must share one master key.
    os.environ.setdefault(keys.MASTER_KEY_ENV, keys.generate_master_key())
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rollcall-bench-import-"))
    rows = _rows(args.rows)
    listing = work / "lista.csv"
    with listing.open("w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.writer(stream, delimiter=";")
        writer.writerow(HEADER)
        writer.writerows(rows)
    book = Workbook(write_only=True)
    sheet = book.create_sheet("lista")
    sheet.append(HEADER)
    for row in rows:
        sheet.append(row)
    workbook = work / "lista.xlsx"
    book.save(workbook)
    try:
        with server(os.environ.get("DATABASE_URL") or None, work / "data") as server_url:
            for path in (listing, workbook):
                database_url = new_database(server_url, "bench_import")
                try:
                    wall, cpu, said = _run(path, database_url, work)
                    again, _, said_again = _run(path, database_url, work)
                finally:
                    drop_database(server_url, database_url)
                print(f"{path.suffix}: {args.rows / wall:,.0f} rows/s ({wall:.1f} s wall, "
                      f"{cpu / args.rows * 1e6:.0f} µs CPU per row in the command); "
                      f"re-run {args.rows / again:,.0f} rows/s")  # fmt: skip
                print(f"  {said}\n  {said_again}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
