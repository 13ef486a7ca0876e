"""Presence: who is inside, and each attendee's steps of the occupancy function.

An attendee's moves (check-ins, check-outs, deletions) are kept in event order and replayed:
a check-in enters if outside, a check-out leaves if inside, a deletion leaves if inside. A
check-in of someone inside (a repeat) or a check-out of someone outside (a stray) is counted,
not applied. Because moves are re-read in order, a late delivery lands where it belongs.

Occupancy is the sum of every attendee's stays: +1 when a stay starts, -1 when it ends. The
occupancy view (projections/occupancy.py) stores these steps and sums them in SQL.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from typing import Final, Literal

import msgspec

from domain.events import CHECKED_IN, CHECKED_OUT, DELETED, AttendeeEvent

MoveKind = Literal["in", "out", "deleted"]
_KINDS: Final[dict[str, MoveKind]] = {CHECKED_IN: "in", CHECKED_OUT: "out", DELETED: "deleted"}


class Move(msgspec.Struct, frozen=True, array_like=True):
    """One check-in, check-out or deletion, at its place in event order."""

    order: str
    kind: MoveKind
    at: datetime


class Moves(msgspec.Struct, kw_only=True):
    """All moves of one attendee of one JTE event, in order, each delivery once."""

    slug: str
    attendee_id: str
    moves: list[Move] = []


class Change(msgspec.Struct, frozen=True, array_like=True):
    """A step of the occupancy function: `delta` (+1 or -1) at instant `at`."""

    at: datetime
    delta: int


class Presence(msgspec.Struct, frozen=True, kw_only=True):
    """What an attendee's moves amount to."""

    slug: str
    attendee_id: str
    inside: bool
    entered_at: datetime | None  # start of the current stay, when inside
    check_ins: int  # every check-in delivery, repeats included
    check_outs: int  # every check-out delivery, strays included
    repeated_check_ins: int  # check-ins of someone already inside (counted, not applied)
    stray_check_outs: int  # check-outs of someone not inside (counted, not applied)
    first_in_at: datetime | None
    last_in_at: datetime | None
    last_out_at: datetime | None
    stays: tuple[tuple[datetime, datetime | None], ...]  # (entered, left or None if inside)

    @property
    def ever_inside(self) -> bool:
        return bool(self.stays)


MOVE_TYPES: Final = frozenset(_KINDS)  # the event types that move an attendee


def is_move(event: AttendeeEvent) -> bool:
    return event.event_type in _KINDS


def add(moves: Moves | None, event: AttendeeEvent) -> Moves:
    """The attendee's moves with one more (an event already there changes nothing)."""
    if moves is None:
        moves = Moves(slug=event.slug, attendee_id=event.attendee_id)
    move = Move(order=event.order, kind=_KINDS[event.event_type], at=event.at)
    orders = [m.order for m in moves.moves]
    index = bisect.bisect_left(orders, move.order)
    if index < len(orders) and orders[index] == move.order:
        return moves
    return Moves(
        slug=moves.slug,
        attendee_id=moves.attendee_id,
        moves=[*moves.moves[:index], move, *moves.moves[index:]],
    )


def presence(moves: Moves) -> Presence:
    """Replay the moves in order."""
    inside_since: datetime | None = None
    stays: list[tuple[datetime, datetime | None]] = []
    check_ins = check_outs = repeats = strays = 0
    first_in = last_in = last_out = None
    for move in moves.moves:
        if move.kind == "in":
            check_ins += 1
            last_in = move.at
            if inside_since is not None:
                repeats += 1
                continue
            inside_since = move.at
            first_in = first_in or move.at
        else:
            if move.kind == "out":
                check_outs += 1
                last_out = move.at
                if inside_since is None:
                    strays += 1
                    continue
            if inside_since is not None:
                stays.append((inside_since, move.at))
                inside_since = None
    if inside_since is not None:
        stays.append((inside_since, None))
    return Presence(
        slug=moves.slug,
        attendee_id=moves.attendee_id,
        inside=inside_since is not None,
        entered_at=inside_since,
        check_ins=check_ins,
        check_outs=check_outs,
        repeated_check_ins=repeats,
        stray_check_outs=strays,
        first_in_at=first_in,
        last_in_at=last_in,
        last_out_at=last_out,
        stays=tuple(stays),
    )


def changes(presence: Presence) -> list[Change]:
    """The attendee's contribution to occupancy."""
    steps = []
    for entered, left in presence.stays:
        steps.append(Change(entered, +1))
        if left is not None:
            steps.append(Change(left, -1))
    return steps
