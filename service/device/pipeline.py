"""The batch function: pad on the host, one device call, split on the host into arrays per request.

Host work runs on its own thread (or inline on the event loop when it is tiny, where a thread hop
would cost more than the work), so it overlaps with the device thread's work on another batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.device.assembly import Answer, pad_batch, split_batch
from service.device.buckets import ShapeBucket
from service.device.engine import Engine
from service.device.kernels import KernelKey
from service.device.work import BatchKey, WorkUnit
from service.observability.metrics import ServiceMetrics

INLINE_HOST_ELEMENTS = 16_384  # below this many padded entries, a thread hop costs more than NumPy

V = TypeVar("V")


class Pipeline:
    """Runs one batch of work units that share a :class:`BatchKey`."""

    def __init__(self, engine: Engine, metrics: ServiceMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self._host = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topk-host")

    async def _on_host(self, elements: int, function: Callable[..., V], *args: object) -> V:
        if elements <= INLINE_HOST_ELEMENTS:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self._host, function, *args)

    def kernel_for(self, key: BatchKey, items: list[WorkUnit]) -> KernelKey:
        """The kernel of this batch: its rows padded to the next row bucket."""
        real_rows = sum(item.rows for item in items)
        bucket = ShapeBucket(self.engine.ladder.row_rung(real_rows), key.n)
        return KernelKey(key.operator, key.output, key.derivative, key.static, bucket)

    def prepare(self, key: BatchKey, items: list[WorkUnit]) -> Awaitable[object] | None:
        """The batcher's ``prepare`` hook: the compile this batch waits for, if its kernel is cold."""
        return self.engine.compile(self.kernel_for(key, items))

    async def __call__(
        self, key: BatchKey, items: list[WorkUnit]
    ) -> Sequence[Answer | BaseException]:
        kernel = self.kernel_for(key, items)
        bucket = kernel.bucket
        real_rows = sum(item.rows for item in items)
        elements = bucket.rows * bucket.n
        inputs = await self._on_host(elements, pad_batch, items, bucket)
        outputs, seconds = await self.engine.run(kernel, inputs)

        m = self.metrics
        m.compute_seconds.labels(key.operator, str(bucket)).observe(seconds)
        m.batch_rows.observe(real_rows)
        m.batch_requests.observe(len(items))
        real_entries = sum(sum(item.lengths) for item in items)
        m.padding_ratio.observe(1.0 - real_entries / elements)
        m.fold()
        sparse = self.engine.operators[key.operator].family == "topk"
        return await self._on_host(elements, split_batch, kernel, outputs, items, sparse)

    def close(self) -> None:
        self._host.shutdown(wait=True, cancel_futures=True)
