"""Writing many view rows at once with binary COPY: psycopg formats COPY rows in C, where
array parameters would be built element by element in Python."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql


def copy_rows(
    cur: psycopg.Cursor[Any],
    table: sql.Composable,
    columns: Sequence[str] | None,
    types: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """Append `rows` to `table` (its `columns`, or all of them when None), each value sent as
    the PostgreSQL type of the same place in `types`."""
    names = (
        sql.SQL("")
        if columns is None
        else sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
    )
    with cur.copy(sql.SQL("COPY {}{} FROM STDIN (FORMAT BINARY)").format(table, names)) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def upsert_rows(
    cur: psycopg.Cursor[Any],
    table: sql.Composable,
    *,
    stage: str,
    columns: Sequence[str],
    types: Sequence[str],
    select: sql.Composable,
    key: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """Insert `rows` into `table`, replacing the row with the same `key` columns, through the
    temporary table `stage` (emptied at commit); `select` reads the stage's columns as the
    table's (a json column, for one, is staged as text)."""
    staged = sql.Identifier(stage)
    cur.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            staged,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                for n, t in zip(columns, types, strict=True)
            ),
        )
    )
    copy_rows(cur, staged, columns, types, rows)
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name))
        for name in columns
        if name not in key
    )
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) DO UPDATE SET {}").format(
            table,
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            select,
            staged,
            sql.SQL(", ").join(map(sql.Identifier, key)),
            updates,
        )
    )
