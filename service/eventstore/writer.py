"""Writers take deliveries from the event loop to the event store, in a bounded thread pool.

The store serialises writers with a table lock, so a transaction per delivery caps intake near a
thousand per second; one transaction for many deliveries costs barely more than for one. The
group-commit writer therefore appends whatever has queued up while the previous batch was
committing, and answers each delivery only once its batch is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from service.eventstore.store import DeliveryRecorded, DeliveryStore, StoreUnavailable
from service.metrics import METRICS

log = logging.getLogger("rollcall.writer")

T = TypeVar("T")


class Overloaded(StoreUnavailable):
    """Too many deliveries are already waiting for the store; the sender should retry later."""


@dataclass
class WriterStats:
    """Counters for metrics and benchmarks."""

    batches: int = 0
    deliveries: int = 0
    largest_batch: int = 0
    append_seconds: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int, seconds: float) -> None:
        METRICS.appended(size, seconds)
        self.batches += 1
        self.deliveries += size
        self.largest_batch = max(self.largest_batch, size)
        self.append_seconds += seconds
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1

    def summary(self) -> str:
        if not self.batches:
            return "no deliveries written"
        return (
            f"{self.deliveries} deliveries in {self.batches} transactions "
            f"(mean {self.deliveries / self.batches:.1f}, largest {self.largest_batch}, "
            f"{1000 * self.append_seconds / self.batches:.2f} ms each)"
        )


class DirectWriter:
    """One transaction per delivery: the simple writer, and the baseline group commit beats."""

    def __init__(
        self, store: DeliveryStore, *, threads: int, queue_max: int, timeout: float
    ) -> None:
        self.stats = WriterStats()
        self._store = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self._waiting = 0
        self._queue_max = queue_max
        self._timeout = timeout

    @property
    def depth(self) -> int:
        """Deliveries waiting for or in a transaction."""
        return self._waiting

    async def submit(self, delivery: DeliveryRecorded) -> int | None:
        """Store one delivery; its position, or None if it was a duplicate."""
        if self._waiting >= self._queue_max:
            raise Overloaded("intake queue is full")
        self._waiting += 1
        try:
            started = time.perf_counter()
            work = asyncio.get_running_loop().run_in_executor(
                self._pool, self._store.append, [delivery]
            )
            (position,) = await _within(work, self._timeout)
            self.stats.record(1, time.perf_counter() - started)
            return position
        finally:
            self._waiting -= 1

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        log.info("direct writes: %s", self.stats.summary())


@dataclass
class _Pending:
    delivery: DeliveryRecorded
    answer: asyncio.Future[int | None]


class GroupCommitWriter:
    """Appends queued deliveries in batches: one transaction each, every answer after its commit.

    A lone delivery on an idle service is written at once. While a batch is being written,
    arrivals queue up and become the next batch; `linger` lets a batch that would only wait
    for the table lock anyway gather a little more company first.
    """

    def __init__(
        self,
        store: DeliveryStore,
        *,
        batch_max: int,
        linger: float,
        queue_max: int,
        timeout: float,
        writers: int,
    ) -> None:
        self.stats = WriterStats()
        self._store = store
        self._batch_max = batch_max
        self._linger = linger
        self._timeout = timeout
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_max)
        # Two writers overlap one batch's Python work with the other's commit; more mostly
        # queue on the table lock.
        self._writers = asyncio.Semaphore(writers)
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="group-commit")
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Deliveries queued, not yet in a batch being written."""
        return self._queue.qsize()

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def submit(self, delivery: DeliveryRecorded) -> int | None:
        """Queue a delivery and wait for its batch to commit; its position, or None if duplicate."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int | None] = loop.create_future()
        try:
            self._queue.put_nowait(_Pending(delivery, answer))
        except asyncio.QueueFull:
            raise Overloaded("intake queue is full") from None
        # A plain timer rather than asyncio.timeout(): measurably cheaper on the hot path.
        expiry = loop.call_later(self._timeout, _expire, answer)
        try:
            return await answer
        finally:
            expiry.cancel()

    async def close(self, grace: float = 10.0) -> None:
        """Write what is queued (for up to `grace` seconds), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._queue.join()
        if self._flusher is not None:
            self._flusher.cancel()
        self._pool.shutdown(wait=True)
        log.info("group commit: %s", self.stats.summary())

    async def _flush_forever(self) -> None:
        while True:
            await self._writers.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._writers.release()
                raise
            self._in_flight += 1
            task = asyncio.create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _next_batch(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        self._take_queued(batch)
        if len(batch) < self._batch_max and self._in_flight and self._linger > 0:
            # Another batch holds the table lock: this one would wait anyway, so gather more.
            await asyncio.sleep(self._linger)
            self._take_queued(batch)
        return batch

    def _take_queued(self, batch: list[_Pending]) -> None:
        while len(batch) < self._batch_max and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            live = [item for item in batch if not item.answer.done()]
            if live:
                await self._append(live)
        finally:
            self._in_flight -= 1
            self._writers.release()
            for _ in batch:
                self._queue.task_done()

    async def _append(self, batch: list[_Pending]) -> None:
        """Append a batch; if it fails for a reason other than the database, split it so that
        only the delivery at fault fails and its neighbours commit."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            positions = await loop.run_in_executor(
                self._pool, self._store.append, [item.delivery for item in batch]
            )
        except StoreUnavailable as error:
            _fail(batch, error)
            return
        except Exception as error:
            if len(batch) == 1:
                log.error(
                    "delivery %s could not be stored: %r", batch[0].delivery.originator_id, error
                )
                _fail(batch, StoreUnavailable("the delivery could not be stored"))
                return
            middle = len(batch) // 2
            await self._append(batch[:middle])
            await self._append(batch[middle:])
            return
        self.stats.record(len(batch), time.perf_counter() - started)
        late = []
        for item, position in zip(batch, positions, strict=True):
            if not item.answer.done():
                item.answer.set_result(position)
            elif position is not None:
                late.append(item.delivery.originator_id)  # answered 503, yet stored
        if late:
            self._store.unacknowledged(late)


def _expire(answer: asyncio.Future[int | None]) -> None:
    """Past the timeout the sender gets 503 and retries; a queued delivery is then skipped."""
    if not answer.done():
        answer.set_exception(StoreUnavailable("the event store did not answer in time"))


def _fail(batch: Sequence[_Pending], error: Exception) -> None:
    for item in batch:
        if not item.answer.done():
            item.answer.set_exception(error)


async def _within(work: Awaitable[T], seconds: float) -> T:
    """Wait for a store answer; past the timeout the sender gets 503 and retries later.

    Waiting is cancelled, so a delivery not yet written is dropped from its batch; one already
    being written may still commit, and JTE's retry is then answered `duplicate`."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise StoreUnavailable("the event store did not answer in time") from None
