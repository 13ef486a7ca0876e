"""Writing many view rows at once with binary COPY: psycopg formats COPY rows in C, where
array parameters would be built element by element in Python.

The statements are rendered to bytes once (their builders are cached per view version by the
callers): psycopg renders a composed statement again on every execute, which cost a live
batch of a few dozen deliveries about a fifth of its time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import sql


class Copy(msgspec.Struct, frozen=True):
    """A binary COPY into a table: the statement, and the PostgreSQL type of each column."""

    statement: bytes
    types: tuple[str, ...]


class Upsert(msgspec.Struct, frozen=True):
    """An insert-or-replace through a temporary stage table: made if missing, filled by COPY,
    then merged into the table by one INSERT ... ON CONFLICT."""

    create_stage: bytes
    copy: Copy
    merge: bytes


def copy_into(table: sql.Composable, columns: Sequence[str] | None, types: Sequence[str]) -> Copy:
    """The COPY that appends rows to `table` (its `columns`, or all of them when None), each
    value sent as the PostgreSQL type of the same place in `types`."""
    names = (
        sql.SQL("")
        if columns is None
        else sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
    )
    statement = sql.SQL("COPY {}{} FROM STDIN (FORMAT BINARY)").format(table, names)
    return Copy(statement.as_bytes(None), tuple(types))


def upsert_into(
    table: sql.Composable,
    *,
    stage: str,
    columns: Sequence[str],
    types: Sequence[str],
    select: sql.Composable,
    key: Sequence[str],
) -> Upsert:
    """The upsert of rows into `table`, replacing the row with the same `key` columns, through
    the temporary table `stage` (emptied at commit); `select` reads the stage's columns as the
    table's (a json column, for one, is staged as text)."""
    staged = sql.Identifier(stage)
    create = sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        staged,
        sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
            for n, t in zip(columns, types, strict=True)
        ),
    )
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name))
        for name in columns
        if name not in key
    )
    merge = sql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) DO UPDATE SET {}"
    ).format(
        table,
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        select,
        staged,
        sql.SQL(", ").join(map(sql.Identifier, key)),
        updates,
    )
    return Upsert(create.as_bytes(None), copy_into(staged, columns, types), merge.as_bytes(None))


def copy_rows(cur: psycopg.Cursor[Any], copy: Copy, rows: Iterable[Sequence[Any]]) -> None:
    """Append `rows` by `copy`."""
    with cur.copy(copy.statement) as writer:
        writer.set_types(list(copy.types))
        for row in rows:
            writer.write_row(row)


def upsert_rows(cur: psycopg.Cursor[Any], upsert: Upsert, rows: Iterable[Sequence[Any]]) -> None:
    """Insert `rows` by `upsert`, replacing those with the same key."""
    cur.execute(upsert.create_stage)
    copy_rows(cur, upsert.copy, rows)
    cur.execute(upsert.merge)
