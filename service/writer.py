"""Writers take deliveries from the event loop to the event store, in a bounded thread pool."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from service.store import DeliveryRecorded, EventStore, StoreUnavailable


class Overloaded(StoreUnavailable):
    """Too many deliveries are already waiting for the store; the sender should retry later."""


class DirectWriter:
    """One transaction per delivery: the simplest writer, and the baseline for group commit."""

    def __init__(self, store: EventStore, *, threads: int, queue_max: int, timeout: float) -> None:
        self._store = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self._slots = asyncio.Semaphore(queue_max)
        self._timeout = timeout

    async def submit(self, delivery: DeliveryRecorded) -> int | None:
        """Store one delivery; its position, or None if it was a duplicate."""
        if self._slots.locked():
            raise Overloaded("intake queue is full")
        async with self._slots:
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self._pool, self._store.append, [delivery])
            try:
                (position,) = await asyncio.wait_for(work, self._timeout)
            except TimeoutError:
                # The write may still commit later; JTE's retry will then be a duplicate.
                raise StoreUnavailable("the event store did not answer in time") from None
            return position

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
