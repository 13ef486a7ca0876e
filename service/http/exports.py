"""CSV and XLSX exports: what a cell may hold, the dialects, and the budget exports run on.

Dialects (`dialect=` with `format=csv`): `csv` (the default) is RFC 4180 with a comma, UTF-8
without BOM; `excel` is what Excel in a Polish (or any `;`-list) locale opens right on a
double-click: a UTF-8 byte order mark, `;` between cells and CRLF line ends. `format=xlsx`
(roster and payments) is an Excel workbook of one sheet with the same cells.

Attendees type their own names into JTE's registration form, so a cell can be a spreadsheet
formula (`=HYPERLINK(...)`). Every cell of every export that begins with `=`, `+`, `-`, `@`, a
tab or a carriage return gets a `'` in front (OWASP's rule), except in numeric columns, where
`-12.50` stays a number.

Roster and payments exports are written by PostgreSQL (COPY) on connections of their own: at
most `export_connections` at once (one more is answered 503 with Retry-After at once), each
with a deadline for the whole export and a limit on how long a client may take nothing. A slow
reader gets its whole file; neither slow nor many exports take the connections the
interactive reads use. An export that cannot finish is cut off: the connection closes before
the chunked body's end, so a client sees an incomplete transfer, never a short file that looks
whole.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal

import asyncpg
import msgspec
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE, WriteOnlyCell
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

log = logging.getLogger("rollcall.exports")

FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_CODES: Final = ", ".join(str(ord(c)) for c in FORMULA_START)
# PostgreSQL types whose text is a number: left as they are.
_NUMERIC_TYPES: Final = frozenset({"int2", "int4", "int8", "numeric", "float4", "float8"})
_QUEUE: Final = 8  # chunks of COPY output held while the client catches up
_CONNECT_TIMEOUT: Final = 5.0  # seconds to get an export connection before answering 503
BOM: Final = "\ufeff"
XLSX_TYPE: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
XLSX_TIME_FORMAT: Final = "yyyy-mm-dd hh:mm:ss"  # times are UTC, as in every answer

Kind = Literal["json", "csv", "xlsx"]
Dialect = Literal["csv", "excel"]


class Table(msgspec.Struct, frozen=True):
    """How a list or summary is answered: JSON, CSV in a dialect, or an XLSX workbook."""

    kind: Kind
    dialect: Dialect = "csv"


PLAIN_CSV: Final = Table("csv")


class ExportsBusy(Exception):
    """Every export connection is in use: the client should retry shortly."""


class ExportCut(Exception):
    """An export that could not finish: its deadline passed or its client took nothing."""


def neutral(value: str) -> str:
    """A text cell a spreadsheet will not run: `'` before a leading formula character."""
    return "'" + value if value.startswith(FORMULA_START) else value


def csv_select(query: str, attributes: Any, *, times: bool = False) -> str:
    """Wrap `query` so COPY writes booleans and times the way the JSON answers do, and no cell
    a spreadsheet would run; with `times`, times stay times (UTC, for XLSX date cells)."""
    columns = ", ".join(_csv_column(a.name, a.type.name, times) for a in attributes)
    # A plain projection of an ordered subquery keeps its order (PostgreSQL pulls it up).
    return f"SELECT {columns} FROM ({query}) AS q"


def _csv_column(name: str, type_name: str, times: bool = False) -> str:
    column = '"' + name.replace('"', '""') + '"'
    if type_name in _NUMERIC_TYPES:
        return column
    if type_name == "bool":
        return f"{column}::text AS {column}"
    if type_name == "timestamptz":
        utc = f"({column} AT TIME ZONE 'UTC')"
        if times:
            return f"{utc} AS {column}"
        fraction = (
            f"CASE WHEN extract(microseconds FROM {column})::bigint % 1000000 <> 0 "
            f"THEN to_char({utc}, '.US') ELSE '' END"
        )
        return f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || {fraction} || 'Z' AS {column}"
    text = f"{column}::text"
    # ascii() is the first character's code: cheaper per cell than a pattern match.
    return (
        f"CASE WHEN ascii({text}) IN ({_FORMULA_CODES}) THEN '''' || {text} ELSE {text} END "
        f"AS {column}"
    )


def csv_rows(
    header: list[str],
    rows: Iterable[Iterable[object]],
    filename: str,
    table: Table = PLAIN_CSV,
) -> Response:
    """A small CSV (or, with `table.kind` xlsx, XLSX) answer built in memory, cells as the COPY
    exports write them. `filename` is given without its extension."""
    if table.kind == "xlsx":
        return Response(
            xlsx_bytes(header, ([_xlsx_cell(v) for v in row] for row in rows)),
            media_type=XLSX_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{filename}.xlsx"'},
        )
    cells = ([_csv_value(v) for v in row] for row in rows)
    return Response(
        csv_text(header, cells, table.dialect),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
    )


def struct_rows(
    kind: type[msgspec.Struct], items: Iterable[msgspec.Struct]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A list of Structs as a header (the field names) and rows."""
    header = [field.name for field in msgspec.structs.fields(kind)]
    return header, [msgspec.structs.astuple(item) for item in items]


def csv_text(header: list[str], rows: Iterable[Iterable[object]], dialect: Dialect) -> str:
    """The rows as CSV text in `dialect` (the `excel` one begins with a BOM)."""
    buffer = io.StringIO()
    if dialect == "excel":
        buffer.write(BOM)
        writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    else:
        writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([neutral(name) for name in header])
    writer.writerows(rows)
    return buffer.getvalue()


def xlsx_bytes(header: list[str], rows: Iterable[Iterable[object]]) -> bytes:
    """An XLSX workbook of one sheet: the header, then the rows. Text cells keep their `'`
    (neutral()), so no cell is a formula; characters XML cannot hold become U+FFFD; times
    (naive, UTC) are date cells a spreadsheet can sort, filter and compute with."""
    book = Workbook(write_only=True)
    sheet = book.create_sheet("export")
    sheet.append([_xlsx_value(neutral(name)) for name in header])
    for row in rows:
        sheet.append([_xlsx_value(value, sheet) for value in row])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _xlsx_value(value: object, sheet: Any = None) -> object:
    if isinstance(value, str):
        return ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)
    if isinstance(value, datetime):
        cell = WriteOnlyCell(sheet, value)
        cell.number_format = XLSX_TIME_FORMAT
        return cell
    return value


def _xlsx_cell(value: object) -> object:
    """A value as an XLSX cell holds it: times as UTC times without a zone (Excel has none),
    the rest as the CSV has it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    return _csv_value(value)


def _csv_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")  # as in JSON
    if value is None:
        return ""
    if isinstance(value, str):
        return neutral(value)
    return value


async def fetch_on(
    conn: asyncpg.Connection,
    query: str,
    args: list[Any],
    deadline: float | None = None,
    *,
    times: bool = False,
) -> list[list[object]]:
    """Every row of `query` on `conn`, cells as the CSV has them (csv_select; with `times`,
    times as UTC times for XLSX)."""
    statement = await conn.prepare(query)
    select = csv_select(query, statement.get_attributes(), times=times)
    rows = await conn.fetch(select, *args, timeout=deadline)
    return [list(row) for row in rows]


class Exports:
    """COPY exports on their own pool, at most `slots` at once, each within `deadline` seconds
    and never `stall` seconds without the client taking data."""

    def __init__(self, pool: asyncpg.Pool, *, slots: int, deadline: float, stall: float) -> None:
        self._pool = pool
        self._slots = slots
        self._deadline = deadline
        self._stall = stall
        self.running = 0

    async def fetch(
        self, query: str, args: list[Any], *, times: bool = False
    ) -> list[list[object]]:
        """Every row of `query`, cells as the CSV has them (csv_select), in memory: for the
        `excel` dialect and XLSX (`times`), which are written here rather than by COPY."""
        if self.running >= self._slots:
            raise ExportsBusy(f"{self._slots} exports are running; retry in a few seconds")
        self.running += 1
        try:
            async with self._pool.acquire(timeout=_CONNECT_TIMEOUT) as conn:
                return await fetch_on(conn, query, args, self._deadline, times=times)
        finally:
            self.running -= 1

    async def stream(
        self, query: str, args: list[Any], filename: str, header: list[str] | None = None
    ) -> Response:
        """Every row of `query` as CSV, in constant memory; under `header` if given (else the
        query's column names).

        The bounded queue is the back-pressure: when the client reads slowly, the copy waits.
        The first chunk is awaited here, so a database that cannot answer is still a 503
        rather than a cut-off 200."""
        if self.running >= self._slots:
            raise ExportsBusy(f"{self._slots} exports are running; retry in a few seconds")
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the copy has ended
        room = asyncio.Semaphore(_QUEUE)

        async def hand_over(chunk: bytes | bytearray | memoryview) -> None:
            await room.acquire()
            chunks.put_nowait(bytes(chunk))  # asyncpg may hand over a bytearray

        # The header goes with the first rows, not before them: a COPY the database refuses
        # before any row (a stored row it cannot read, no connection) is then still a 503.
        head = [csv_text(header, [], "csv").encode()] if header is not None else []

        async def rows(chunk: bytes | bytearray | memoryview) -> None:
            if head:
                await hand_over(head.pop())
            await hand_over(chunk)

        async def copy() -> None:
            async with self._pool.acquire(timeout=_CONNECT_TIMEOUT) as conn:
                statement = await conn.prepare(query)
                select = csv_select(query, statement.get_attributes())
                # asyncpg's own budget for the whole COPY, the client's waits included; at its
                # end asyncpg cancels the query on the server.
                await conn.copy_from_query(
                    select, *args, output=rows, format="csv", header=header is None,
                    timeout=self._deadline,
                )  # fmt: skip
            if head:  # no rows: the header alone
                await hand_over(head.pop())

        def ended(_: asyncio.Task[None]) -> None:
            # A done callback runs however the copy ended, even cancelled before it began.
            self.running -= 1
            chunks.put_nowait(None)

        async def next_chunk() -> bytes | None:
            chunk = await chunks.get()
            room.release()
            return chunk

        self.running += 1  # one event loop: nothing ran between the check and this
        task = asyncio.create_task(copy())
        task.add_done_callback(ended)
        try:
            first = await next_chunk()
            if first is None:
                await task  # a failed copy raises here, before any answer is sent
                first = b""
        except BaseException:
            task.cancel()
            raise

        async def body() -> AsyncIterator[bytes]:
            chunk: bytes | None = first
            while chunk is not None:
                yield chunk
                chunk = await next_chunk()
            try:
                await task
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                raise ExportCut(f"{type(error).__name__} after the answer began") from error

        return _CsvStream(
            body(),
            copy=task,
            stall=self._stall,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


class _CsvStream(StreamingResponse):
    """A streamed CSV that ends only when it is whole: if the export is cut, or the client
    takes nothing for `stall` seconds, the body's last chunk is never sent and the server
    closes the connection, so no client mistakes a short file for the whole one."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        copy: asyncio.Task[None],
        stall: float,
        media_type: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._chunks = content
        self._copy = copy
        self._stall = stall

    async def stream_response(self, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self._chunks:
                async with asyncio.timeout(self._stall):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except TimeoutError:
            log.warning("CSV export cut off: the client took nothing for %.0f s", self._stall)
            return
        except ExportCut as cut:
            log.warning("CSV export cut off: %s", cut)
            return
        finally:
            # However it ended (the client gone too): stop reading rows nobody will receive.
            self._copy.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
