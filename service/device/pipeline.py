"""The batch function: pad on the host, device calls, split on the host into arrays per request.

A batch runs on the kernel the engine plans for it (:meth:`~service.device.engine.Engine.plan`):
usually one call of its exact bucket, padded straight into that bucket. A batch with more rows
than its kernel's bucket goes through in several calls, planned again before each one, so that a
batch that started on a cover moves to its exact kernel as soon as the background has built it.

Host work runs on its own thread (or inline on the event loop when it is tiny, where a thread hop
would cost more than the work), so it overlaps with the device thread's work on another batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from service.device.assembly import Answer, pad_batch, split_batch, take_rows
from service.device.buckets import ShapeBucket
from service.device.engine import Engine, Outputs
from service.device.kernels import KernelInputs, KernelKey
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

    def prepare(self, _key: BatchKey, _items: list[WorkUnit]) -> Awaitable[object] | None:
        """The batcher's ``prepare`` hook: a batch queued during start-up waits for the covers."""
        return None if self.engine.warm else self.engine.warm_up_done.wait()

    async def _call(
        self, key: BatchKey, kernel: KernelKey, inputs: KernelInputs, real: int
    ) -> Outputs:
        outputs, seconds = await self.engine.run(
            kernel, self.engine.form(key), inputs, key.derivative
        )
        bucket = kernel.bucket
        self.metrics.compute_seconds.labels(key.operator, str(bucket)).observe(seconds)
        self.metrics.padding_ratio.observe(1.0 - real / bucket.entries)
        return outputs

    async def __call__(
        self, key: BatchKey, items: list[WorkUnit]
    ) -> Sequence[Answer | BaseException]:
        engine = self.engine
        form = engine.form(key)
        lanes = key.derivative != "none"
        rows = sum(item.rows for item in items)
        real_entries = sum(sum(item.lengths) for item in items)
        kernel, take = engine.plan(form, lanes, rows, key.n)
        if take == rows:  # one call: pad straight into its bucket
            inputs = await self._on_host(kernel.bucket.entries, pad_batch, items, kernel.bucket)
            out, jvp, vjp = await self._call(key, kernel, inputs, real_entries)
        else:
            whole = await self._on_host(rows * key.n, pad_batch, items, ShapeBucket(rows, key.n))
            parts: list[Outputs] = []
            start = 0
            while start < rows:
                if start:
                    kernel, take = engine.plan(form, lanes, rows - start, key.n)
                stop = start + take
                inputs = await self._on_host(
                    kernel.bucket.entries, take_rows, whole, start, stop, kernel.bucket
                )
                share = int(whole.lengths[start:stop].sum())
                outputs = await self._call(key, kernel, inputs, share)
                parts.append(_cut(outputs, take, key.n))
                start = stop
            out, jvp, vjp = _join(parts)
        m = self.metrics
        m.batch_rows.observe(rows)
        m.batch_requests.observe(len(items))
        m.fold()
        sparse = engine.operators[key.operator].family == "topk"
        return await self._on_host(out.size, split_batch, out, jvp, vjp, items, sparse)

    def close(self) -> None:
        self._host.shutdown(wait=True, cancel_futures=True)


def _cut(outputs: Outputs, rows: int, n: int) -> Outputs:
    out, jvp, vjp = outputs
    return (
        out[:rows, :n],
        None if jvp is None else jvp[:rows, :n],
        None if vjp is None else vjp[:rows, :n],
    )


def _join(parts: list[Outputs]) -> Outputs:
    def stack(index: int) -> np.ndarray | None:
        arrays = [part[index] for part in parts]
        return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

    out = stack(0)
    assert out is not None
    return out, stack(1), stack(2)
