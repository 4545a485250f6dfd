"""Dynamic batching in plain asyncio: coalesce concurrent requests with the same key.

Each request is queued under its key (its shape bucket and kernel) with its own future. A key's
queue is sent as one batch when its rows reach the row budget, or when its oldest request has
waited ``max_delay`` seconds, whichever comes first (Triton/Ray Serve semantics); with a delay of
0 whatever has queued while the previous batches ran goes together. At most
``max_concurrent_batches`` batches are in flight, so the host work of one overlaps the device work
of another; but a partial batch is not sent while a batch of its own key is in flight: it is better
off waiting for the device, gathering the requests that arrive meanwhile, than going out small
(only a batch that cannot grow any more — its row budget full, or batching off — goes beside one
of its key).

Keys share the device fairly by work (start-time fair queueing, the continuous form of deficit
round robin): each key's *served* count grows by the cost (rows × n, padded entries) of every
batch it sends, and of the keys whose batch may go, the one served least goes first. A key that
comes back after a pause starts level with the one being served, so it cannot claim the time it
was idle. Measured before this rule (oldest first, and no partial batch beside any batch in
flight): 64 clients sending 256 × 1024 requests (each a full batch, always eligible) held both
slots, and the small requests of 256 other clients could go only as a full batch of 256 — from
~8,500/s alone to 169/s at p50 1.8 s. Now a small batch goes at the first free slot, level with
the big ones (bench/mixed.py).

The queue is bounded twice, and a bound reached refuses at once (the caller answers 503): by
requests in all, and by the work queued under each key (its cost), so that big requests are
refused by what they cost while small ones, under their own keys, still get in.

A request can leave the queue unserved: when its future is cancelled (the client went away) or
when its timeout passes while it is still queued (its future fails with ``DeadlineExceeded``, at
the deadline itself). Either way it is dropped before dispatch and costs no device time; once its
batch has been sent it is computed in full.

The batch function returns one result *or exception* per item, so one bad item never fails its
batch-mates; only an exception of the batch function itself fails the whole batch.

A batch that must first wait for something other than the device (its kernel compiling, when its
shape was not warmed up) says so through the optional ``prepare`` hook, called as the batch is
taken: it waits without a slot, so batches of other keys keep the device busy instead of stalling
behind a compile, and its key's later requests stay queued (growing one batch) until it is done.
Its own requests are not sent yet while it waits: one that times out or is cancelled meanwhile
is dropped before the batch runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queued`` requests, or its key ``max_queued_cost`` work, already;
    try again later."""


class BatcherClosed(Exception):
    """The batcher is draining or stopped and takes no new requests."""


class DeadlineExceeded(Exception):
    """The request was still queued when its timeout ran out; it was never computed."""


@dataclass
class _Job(Generic[T, R]):
    item: T
    rows: int
    cost: int
    enqueued_at: float
    future: asyncio.Future[R] = field(repr=False)
    sent: bool = False  # taken into a batch: from then on it is computed, whatever happens


def _expire(job: _Job[T, R], timeout: float) -> None:
    if not job.sent and not job.future.done():
        job.future.set_exception(
            DeadlineExceeded(f"still queued after its timeout of {timeout:g} s")
        )


BatchFunction = Callable[[K, list[T]], Awaitable[Sequence[R | BaseException]]]
# What a batch must wait for before it can run (None: nothing), e.g. its kernel compiling.
PrepareFunction = Callable[[K, list[T]], Awaitable[object] | None]


class Batcher(Generic[K, T, R]):
    """Queues items per key and runs ``process(key, items)`` on batches of them."""

    def __init__(
        self,
        process: BatchFunction[K, T, R],
        *,
        max_batch_rows: int,
        max_delay: float,
        max_queued: int,
        max_queued_cost: int | None = None,
        max_concurrent_batches: int = 1,
        batching: bool = True,
        observe_wait: Callable[[float], None] | None = None,
        prepare: PrepareFunction[K, T] | None = None,
    ) -> None:
        if max_batch_rows < 1 or max_queued < 1 or max_concurrent_batches < 1 or max_delay < 0:
            raise ValueError(
                "max_batch_rows, max_queued, max_concurrent_batches >= 1; max_delay >= 0"
            )
        self._process = process
        self._max_rows = max_batch_rows
        self._max_delay = max_delay
        self._max_queued = max_queued
        self._max_cost = max_queued_cost
        self._batching = batching
        self._observe_wait = observe_wait
        self._prepare = prepare
        self._queues: dict[K, collections.deque[_Job[T, R]]] = {}
        self._queued_rows: dict[K, int] = {}  # kept up to date, so no queue is ever summed
        self._queued_cost: dict[K, int] = {}
        self._queued = 0
        self._served: dict[K, float] = {}  # work sent per key, in cost units (fair queueing)
        self._clock = 0.0  # the served count of the last batch sent: where a returning key starts
        self._running_keys: collections.Counter[K] = collections.Counter()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._preparing: collections.Counter[K] = collections.Counter()  # keys waiting on prepare
        self._controller: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Requests queued and not yet sent to the batch function."""
        return self._queued

    @property
    def full(self) -> bool:
        """Whether the next request would be refused whatever its key."""
        return self._queued >= self._max_queued or self._closing

    def start(self) -> None:
        """Start the controller task (call from inside the running event loop)."""
        if self._controller is None:
            self._controller = asyncio.get_running_loop().create_task(self._control())

    async def submit(
        self, key: K, item: T, rows: int = 1, timeout: float | None = None, cost: int | None = None
    ) -> R:
        """Queue ``item`` (worth ``rows`` rows of budget) and wait for its own result."""
        return await self.enqueue(key, item, rows, timeout, cost)

    def enqueue(
        self,
        key: K,
        item: T,
        rows: int = 1,
        timeout: float | None = None,
        cost: int | None = None,
    ) -> asyncio.Future[R]:
        """Queue ``item`` and return the future of its result; ``cost`` (default ``rows``) is its
        work, for the per-key bound and for fairness between keys.

        Cancelling the future (the client went away) takes the item out of the queue unless its
        batch has already been sent. If it is still queued ``timeout`` seconds from now, the
        future fails with :class:`DeadlineExceeded` and the item is dropped before dispatch.
        """
        if self._closing or self._controller is None:
            raise BatcherClosed("the batcher is not accepting requests")
        if self._queued >= self._max_queued:
            raise QueueFull(f"{self._queued} requests queued (max {self._max_queued})")
        cost = rows if cost is None else cost
        queue = self._queues.get(key)
        if queue is None:  # the key (re)joins level with the key being served
            queue = self._queues[key] = collections.deque()
            self._served[key] = max(self._served.get(key, 0.0), self._clock)
        cost_now = self._queued_cost.get(key, 0) + cost
        if self._max_cost is not None and cost_now > self._max_cost and queue:
            raise QueueFull(
                f"{cost_now - cost} entries of work queued for this shape (max {self._max_cost})"
            )
        loop = asyncio.get_running_loop()
        job: _Job[T, R] = _Job(item, rows, cost, loop.time(), loop.create_future())
        queue.append(job)
        rows_now = self._queued_rows.get(key, 0) + rows
        self._queued_rows[key] = rows_now
        self._queued_cost[key] = cost_now
        self._queued += 1
        if timeout is not None:
            loop.call_at(job.enqueued_at + timeout, _expire, job, timeout)
        # Wake the controller only when this request changes what it waits for: a new oldest
        # request (a new deadline), a full row budget, or no batching at all. Waking it for every
        # request would cost more than the batching saves.
        if (
            len(queue) == 1
            or rows_now >= self._max_rows
            or not self._batching
            or self._max_delay == 0
        ):
            self._wakeup.set()
        return job.future

    async def close(self, *, drain: bool = True) -> None:
        """Stop taking requests; finish the queued ones (``drain``) or fail them, then stop."""
        self._closing = True
        if not drain:
            for queue in self._queues.values():
                for job in queue:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed("the server is shutting down"))
            self._queues.clear()
            self._queued_rows.clear()
            self._queued_cost.clear()
            self._queued = 0
        self._wakeup.set()
        if self._controller is not None:
            await asyncio.gather(self._controller, return_exceptions=True)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    # ------------------------------------------------------------------------------ controller

    async def _control(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            key, wait = self._due(loop.time())
            if key is None:
                if self._closing and self._queued == 0:
                    return
                if wait is None:
                    await self._wakeup.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wakeup.wait()
                continue
            # Choose and take the jobs only once a slot is free: requests arriving meanwhile join
            # the batch, and a key that became due meanwhile may be the one served least.
            await self._slots.acquire()
            key, _ = self._due(loop.time())
            jobs = self._take(key) if key is not None else []
            if key is None or not jobs:
                self._slots.release()
                continue
            waiting = None
            if self._prepare is not None:
                try:
                    waiting = self._prepare(key, [job.item for job in jobs])
                except Exception as error:  # e.g. its kernel may not be compiled: fail this batch
                    self._slots.release()
                    self._fail(jobs, error)
                    continue
            start = self._served.get(key, self._clock)
            self._served[key] = start + sum(job.cost for job in jobs)
            self._clock = max(self._clock, start)
            if waiting is None:
                for job in jobs:
                    job.sent = True
                self._running_keys[key] += 1
            else:  # not the device's work: the slot goes back, and this key waits meanwhile
                self._slots.release()
                self._preparing[key] += 1
            task = loop.create_task(self._dispatch(key, jobs, waiting))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _due(self, now: float) -> tuple[K | None, float | None]:
        """The key whose batch should go now, else the time until one is due (None: until woken).

        A batch may go when it cannot grow (row budget full, batching off, closing) or when its
        oldest request has waited ``max_delay`` and no batch of its key is in flight (that one
        wakes the controller when it ends). Of those, the key served least goes, the oldest
        request breaking ties."""
        due_key: K | None = None
        due_rank = (float("inf"), float("inf"))
        next_wait: float | None = None
        for key, queue in self._queues.items():
            if not queue or key in self._preparing:
                continue
            final = not self._batching or self._closing or self._queued_rows[key] >= self._max_rows
            if not final and key in self._running_keys:
                continue
            oldest = queue[0].enqueued_at
            deadline = oldest + self._max_delay
            if final or deadline <= now:
                rank = (self._served[key], oldest)
                if rank < due_rank:
                    due_key, due_rank = key, rank
            else:
                wait = deadline - now
                next_wait = wait if next_wait is None else min(next_wait, wait)
        return due_key, next_wait

    def _take(self, key: K) -> list[_Job[T, R]]:
        """Pop the oldest jobs of ``key`` within the row budget (at least one), dropping cancelled."""
        queue = self._queues.get(key)
        jobs: list[_Job[T, R]] = []
        rows = 0
        now = asyncio.get_running_loop().time()
        while queue:
            job = queue[0]
            if job.future.done():  # cancelled or expired: do not spend device time on it
                queue.popleft()
                self._queued -= 1
                self._queued_rows[key] -= job.rows
                self._queued_cost[key] -= job.cost
                continue
            if jobs and (not self._batching or rows + job.rows > self._max_rows):
                break
            queue.popleft()
            self._queued -= 1
            self._queued_rows[key] -= job.rows
            self._queued_cost[key] -= job.cost
            jobs.append(job)
            rows += job.rows
            if self._observe_wait is not None:
                self._observe_wait(now - job.enqueued_at)
        if queue is not None and not queue:
            del self._queues[key]
            del self._queued_rows[key]
            del self._queued_cost[key]
        return jobs

    def _fail(self, jobs: list[_Job[T, R]], error: Exception) -> None:
        log.exception("batch of %d requests failed", len(jobs), exc_info=error)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _done_preparing(self, key: K) -> None:
        self._preparing[key] -= 1
        if not self._preparing[key]:
            del self._preparing[key]

    async def _dispatch(
        self, key: K, jobs: list[_Job[T, R]], waiting: Awaitable[object] | None
    ) -> None:
        holding = waiting is None  # this batch's slot
        preparing = waiting is not None
        try:
            while waiting is not None:  # not sent yet: a request may time out or go away meanwhile
                await waiting
                jobs = [job for job in jobs if not job.future.done()]
                items = [job.item for job in jobs]
                waiting = self._prepare(key, items) if jobs and self._prepare else None
            if preparing:
                self._done_preparing(key)
                preparing = False
                await self._slots.acquire()
                self._running_keys[key] += 1
                holding = True
                jobs = [job for job in jobs if not job.future.done()]
                for job in jobs:
                    job.sent = True
            if not jobs:
                return
            results = await self._process(key, [job.item for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(jobs)}"
                )
        except Exception as error:  # the batch function itself failed: every job learns why
            self._fail(jobs, error)
        else:
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
        finally:
            if preparing:
                self._done_preparing(key)
            if holding:
                self._running_keys[key] -= 1
                if not self._running_keys[key]:
                    del self._running_keys[key]
                self._slots.release()
            self._wakeup.set()
