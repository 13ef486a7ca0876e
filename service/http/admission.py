"""What unverified deliveries may hold at once, per process: request slots and body bytes.

A delivery signed over its body stays unverified until the whole body has arrived, so anyone
can send one. Together they may hold at most three quarters of the request slots (the rest
stay free for health checks, the analyst API and deliveries whose headers verify them) and
`unverified_body_memory` bytes. A newcomer that does not fit drops the unverified deliveries
that have been arriving longest: a slow sender cannot keep a prompt one out, and an attacker
would have to open that many connections within one genuine delivery's round trip.
"""

from __future__ import annotations

from collections.abc import Callable

from service.metrics import METRICS

Drop = Callable[[], None]


def unverified_slots(max_connections: int) -> int:
    """Request slots unverified deliveries may hold: all but a quarter (at least one) kept."""
    return max_connections - max(1, max_connections // 4)


class Ticket:
    """One unverified delivery's place, and the body bytes charged to it."""

    __slots__ = ("drop", "held", "live")

    def __init__(self, drop: Drop | None) -> None:
        self.drop = drop  # closes its connection; None where the server cannot
        self.held = 0
        self.live = True


class Admission:
    """The unverified deliveries in flight in this process, oldest first, and their bytes.

    Used from the event loop only, so it needs no lock."""

    def __init__(self, slots: int, memory: int) -> None:
        self.slots = slots
        self.memory = memory
        self.held = 0
        self._tickets: dict[Ticket, None] = {}  # insertion order: oldest first

    def enter(self, reserve: int, drop: Drop | None) -> Ticket | None:
        """A place for a delivery that will hold `reserve` bytes (its declared length), made by
        dropping the oldest others if need be; None if no room can be made."""
        ticket = Ticket(drop)
        if not self._make_room(1, reserve, ticket):
            return None
        self._tickets[ticket] = None
        ticket.held = reserve
        self.held += reserve
        return ticket

    def charge(self, ticket: Ticket, size: int) -> bool:
        """Charge `size` more bytes to a delivery of undeclared length; False if no room."""
        if not self._make_room(0, size, ticket):
            return False
        ticket.held += size
        self.held += size
        return True

    def leave(self, ticket: Ticket) -> None:
        """The delivery is verified, refused, answered or gone: its place and bytes are free."""
        if ticket.live:
            ticket.live = False
            del self._tickets[ticket]
            self.held -= ticket.held

    def _make_room(self, readers: int, size: int, newcomer: Ticket) -> bool:
        while len(self._tickets) + readers > self.slots or self.held + size > self.memory:
            oldest = next((t for t in self._tickets if t.drop and t is not newcomer), None)
            if oldest is None or oldest.drop is None:  # none the server lets us drop
                return False
            self.leave(oldest)
            oldest.drop()
            METRICS.connection_dropped("unverified")
        return True
