"""Folding a batch of stored deliveries into each target view's writes.

A delivery a view cannot apply is poison: dead-lettered (and the batch goes on) while the live
views run, or the end of a strict rebuild, which stops rather than build a view without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import msgspec
import psycopg

from domain.events import AttendeeEvent
from projections.registry import VIEWS
from projections.schema import Version
from projections.source import Record, occurred_by
from projections.view import Key, Poison, Target


class PoisonError(Exception):
    """In a strict build, an event a view cannot apply stops the build."""


class LetterRow(msgspec.Struct, frozen=True):
    """A dead letter: the delivery a view could not apply, and why."""

    position: int
    key: Any
    slug: str | None
    attendee_id: str | None
    event_type: str | None
    error: str


class Folded(msgspec.Struct):
    """One view's share of a batch, folded and ready to write."""

    target: Target
    last: int
    states: dict[Key, Any]
    write: Any
    letters: list[LetterRow]


Loader = Callable[[Version, list[Key]], dict[Key, Any]]


class Recorder(Protocol):
    """Where folded batches are written (projections.tracking.ViewTracking)."""

    def record(self, cur: psycopg.Cursor[Any], folded: Sequence[Folded]) -> list[Target]: ...


def apply_records(
    cur: psycopg.Cursor[Any],
    tracking: Recorder,
    targets: Sequence[Target],
    records: Sequence[Record],
    *,
    strict: bool,
    as_of: datetime | None = None,
) -> list[Target]:
    """Fold and write records for every target inside the caller's transaction; the targets,
    moved on."""
    folded = [
        fold_records(
            target,
            records,
            lambda version, keys: VIEWS[version.view].load(cur, version, keys),
            strict=strict,
            as_of=as_of,
        )
        for target in targets
    ]
    return tracking.record(cur, folded)


def dead_letters(view: str, strict: bool, letters: list[LetterRow]) -> Poison:
    """What a fold does with an event it cannot apply: a strict build stops on it, any other
    keeps it in `letters` (the view's dead letters) and goes on."""

    def poison(event: AttendeeEvent, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"[:500]
        if strict:
            raise PoisonError(
                f"{view}: delivery at position {event.position} cannot apply: {message}"
            ) from error
        letters.append(
            LetterRow(
                event.position, event.key, event.slug, event.attendee_id, event.event_type, message
            )
        )

    return poison


def fold_records(
    target: Target,
    records: Sequence[Record],
    load: Loader,
    *,
    strict: bool,
    as_of: datetime | None = None,
) -> Folded:
    """Fold the records after the target's position (occurred by `as_of`, if given)."""
    version = target.version
    last = records[-1].position if records else target.position
    relevant = [
        r
        for r in records
        if r.position > target.position and (as_of is None or occurred_by(r, as_of))
    ]
    letters: list[LetterRow] = []

    poison = dead_letters(version.view, strict, letters)

    for record in relevant:
        if record.unreadable is not None:
            message = f"unreadable with the current parser: {record.unreadable}"[:500]
            if strict:
                raise PoisonError(
                    f"{version.view}: delivery at position {record.position}: {message}"
                )
            letters.append(LetterRow(record.position, record.key, None, None, None, message))
    view = VIEWS[version.view]
    events = [r.event for r in relevant if r.event is not None]
    states = load(version, sorted(view.keys(events)))
    new_states, write = view.fold(states, events, poison)
    return Folded(target, max(last, target.position), new_states, write, letters)
