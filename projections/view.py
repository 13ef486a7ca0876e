"""What a view module provides to the engine (runner, rebuild), and what the engine hands it.

Each view (projections/roster.py, occupancy.py, payments.py) owns its tables, its fold and its
writes, and answers the analysts' queries about itself; the engine only needs this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent
from projections.schema import Version

Key = tuple[str, str]  # (JTE event slug, attendee id)
# Called by a fold with an event it cannot apply: dead-lettered live, fatal in a strict rebuild.
Poison = Callable[[AttendeeEvent, Exception], None]


class View(Protocol):
    """A view: its tables, its analytics views, and how a batch of events updates it."""

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    def ddl(self, version: Version) -> list[sql.Composed]:
        """Tables, and the indexes folding needs."""
        ...

    def indexes(self, version: Version) -> list[sql.Composed]:
        """Indexes for readers: created with a live version, or once a rebuild has filled one."""
        ...

    def migrations(self, version: Version) -> list[sql.Composed]:
        """What brings a version an earlier release made to this release's tables (idempotent):
        run before a live version is used and before an interrupted build resumes."""
        ...

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        """The `analytics` schema's SQL views over this version, by name."""
        ...

    def keys(self, events: Sequence[AttendeeEvent]) -> set[Key]:
        """The (slug, attendee id) whose stored state the fold of these events needs."""
        ...

    def load(self, cur: psycopg.Cursor[Any], version: Version, keys: list[Key]) -> dict[Key, Any]:
        """Those states as stored."""
        ...

    def fold(
        self, states: dict[Key, Any], events: Sequence[AttendeeEvent], poison: Poison
    ) -> tuple[dict[Key, Any], Any]:
        """The new states of the keys the events touched, and what to write."""
        ...

    def write(self, cur: psycopg.Cursor[Any], version: Version, write: Any) -> None:
        """Store a fold's result."""
        ...


class Bulk(Protocol):
    """A fresh version filled once per key (projections/bulk.py): each fold's rows streamed out
    with COPY, never updated, and whatever sums over all keys written at the end, once, from
    the sums of every worker's share of the keys."""

    def add(self, cur: psycopg.Cursor[Any], write: Any) -> None:
        """Store the rows of a fold of whole keys from nothing (no key seen before)."""
        ...

    def totals(self) -> Any:
        """What this share of the keys adds to the sums over all keys (picklable)."""
        ...

    def absorb(self, totals: Any) -> None:
        """Add a share's `totals` to this one's."""
        ...

    def finish(self, cur: psycopg.Cursor[Any]) -> None:
        """Write what accumulates over all keys."""
        ...

    def settle(self) -> list[sql.Composed]:
        """What leaves one row per key where the workers, each folding its share of the
        attendees, may have written one key twice (run before the keys are made)."""
        ...


class RowsOnly:
    """The part of a Bulk for a view whose rows are all it writes: no sums over keys, nothing
    to write at the end."""

    def totals(self) -> None:
        return None

    def absorb(self, totals: None) -> None:
        return None

    def finish(self, cur: psycopg.Cursor[Any]) -> None:
        return None

    def settle(self) -> list[sql.Composed]:
        return []  # one fold per attendee writes each row once


class BulkView(View, Protocol):
    """A view a bulk rebuild can fill: which event types it folds, and its bulk writer."""

    @property
    def event_types(self) -> frozenset[str] | None:
        """The event types its fold reads (None: all)."""
        ...

    def bulk(self, version: Version) -> Bulk: ...


class Target(msgspec.Struct, frozen=True):
    """A view version and the position it has applied up to."""

    version: Version
    position: int
