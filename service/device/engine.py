"""The engine: which executable runs a batch, building executables, and the device thread.

Start-up builds (loads from the executable store, else compiles, in ``compile_threads`` threads)
the *cover* kernels: every variant of every operator, at the few ``cover_buckets`` (e.g. 16×1024
and 1×1048576). Together they serve every request the limits allow, so once they are built the
server is ready and nothing ever compiles on the request path: a batch runs on the cheapest kernel
already built that fits it (:meth:`Engine.plan`), in as many calls as its rows need.

A batch served by a cover pays for padding (a 64×16 router batch in a 16×1024 cover is 64× the
work, ~1 ms); meanwhile the kernel of its exact bucket, one variant only (~1 s), compiles on a
background thread (niced on Linux, so that serving keeps the CPU), and the next call, even the
next chunk of the same batch, runs on it. Kernels built in a previous run under the same
fingerprint are loaded in the background after start-up, so a restart finds its usual shapes warm.

Device calls (running a kernel, waiting for its results) happen on a single thread
(:class:`~service.device.device_thread.DeviceThread`), so executables never run concurrently and
the event loop never blocks on them. The engine is built inside the app's lifespan, never at
import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from service.device.buckets import BucketLadder, ShapeBucket
from service.device.device_thread import DeviceThread
from service.device.executable_store import ExecutableStore, fingerprint
from service.device.kernels import (
    CompiledKernels,
    KernelInputs,
    KernelKey,
    Source,
    arguments,
    selector,
)
from service.device.operators import BoundOperator
from service.device.variants import Form, Variant, form_of, variant_table
from service.device.work import BatchKey, Derivative
from service.settings import Settings

log = logging.getLogger(__name__)

# A device call's fixed cost (dispatch, transfers, Python), in padded entries of work: the
# planner prefers one call of a bigger bucket to many calls of a smaller one below this.
CALL_COST_ENTRIES = 16_384
# Computing the JVP/VJP lanes for a request that does not want them (bench/RESULTS.md: 1.0–1.6×).
UNUSED_LANES_COST = 1.5
BACKGROUND_NICENESS = 10

Built = Callable[[KernelKey, float, Source, str], None]
Outputs = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


def _lower_priority() -> None:
    """Nice the calling thread (Linux: a thread is a schedulable task of its own)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)


class Engine:
    """Owns the executables and the device thread; :meth:`run` is one device call."""

    def __init__(
        self, settings: Settings, operators: dict[str, BoundOperator], on_built: Built | None = None
    ) -> None:
        self.settings = settings
        self.operators = operators
        self.ladder = BucketLadder(settings.row_buckets, settings.n_buckets, settings.max_entries)
        self.table = variant_table(operators)
        self.covers = tuple(KernelKey(self.table, True, b) for b in settings.covers)
        self._on_built = on_built
        self._phase = "warmup"
        store = None
        if settings.compilation_cache_dir:
            devices = jax.local_devices()
            count = len(devices) if settings.devices == 0 else min(settings.devices, len(devices))
            directory = str(Path(settings.compilation_cache_dir).expanduser() / "executables")
            store = ExecutableStore(directory, fingerprint(devices[:count]))
        self.store = store
        self.kernels = CompiledKernels(self._built, devices=settings.devices, store=store)
        self._device = DeviceThread("topk-device")
        self._compilers = [
            DeviceThread(f"topk-compile-{i}") for i in range(settings.compile_threads)
        ]
        self._background = DeviceThread("topk-background-compile")
        self._pending: set[KernelKey] = set()
        self._kernels_of: dict[Variant, tuple[KernelKey, ...]] = {}  # single-variant, built
        self._ready_covers: tuple[KernelKey, ...] = ()
        self._forms: dict[BatchKey, Form] = {}
        self._selectors: dict[tuple[KernelKey, Form], np.ndarray] = {}
        self._zeros: dict[KernelKey, Any] = {}
        self._closing = False
        self.warm = False
        self.warm_up_done = asyncio.Event()  # set when the warm-up ends, however it ends

    def _built(self, key: KernelKey, seconds: float, source: Source) -> None:
        phase = self._phase
        log.info("%s %s in %.2f s (%s)", source, key, seconds, phase)
        if len(key.variants) == 1:
            variant = key.variants[0]
            self._kernels_of[variant] = (*self._kernels_of.get(variant, ()), key)
        if self._on_built is not None:
            self._on_built(key, seconds, source, phase)

    # ------------------------------------------------------------------ start-up

    def warmup_keys(self) -> Iterator[KernelKey]:
        """The single-variant kernels the settings ask for after the covers (``TOPK_WARMUP_*``)."""
        s = self.settings
        for name in s.warmup_operators:
            operator = self.operators.get(name)
            if operator is None:
                log.warning("warm-up skips operator %r: not in this core", name)
                continue
            for output in s.warmup_outputs:
                if output not in operator.functions:
                    continue
                variant = form_of(operator, output, operator.static({})).variant
                for lanes in sorted({d != "none" for d in s.warmup_derivatives}):
                    for rows in s.warm_row_buckets:
                        for n in s.warm_n_buckets:
                            bucket = ShapeBucket(min(rows, self.ladder.most_rows(n)), n)
                            yield KernelKey((variant,), lanes, bucket)

    async def warm_up(self) -> int:
        """Build the covers (in parallel), then mark the engine warm; returns how many.

        Afterwards, in the background: the kernels stored by earlier runs (loads only), then the
        ``TOPK_WARMUP_*`` kernels.
        """
        started = time.perf_counter()
        free: asyncio.Queue[DeviceThread] = asyncio.Queue()
        for thread in self._compilers:
            free.put_nowait(thread)

        async def build(key: KernelKey) -> None:
            thread = await free.get()
            try:
                await thread.run(self.kernels.build, key)
            finally:
                free.put_nowait(thread)

        try:
            await asyncio.gather(*(build(key) for key in self.covers))
        finally:
            self.warm_up_done.set()
        self._ready_covers = self.covers
        self._phase = "background"
        self.warm = True
        log.info(
            "ready: %d cover kernels of %d variants in %.1f s",
            len(self.covers),
            len(self.table),
            time.perf_counter() - started,
        )
        for thread in self._compilers:  # their work is done; the background thread takes over
            thread.close()
        self._background.run(_lower_priority)
        if self.store is not None:
            stored = await asyncio.to_thread(self.store.keys)
            for key in stored:
                if self._valid(key):
                    self._schedule(key, compile_missing=False)
        for key in self.warmup_keys():
            self._schedule(key)
        return len(self.covers)

    def _valid(self, key: KernelKey) -> bool:
        """A stored key this server can use (its settings may have changed since)."""
        table = set(self.table)
        return (
            isinstance(key, KernelKey)
            and len(key.variants) == 1
            and key.variants[0] in table
            and key.bucket.n in self.ladder.n_rungs
            and key.bucket.rows in self.ladder.row_rungs
        )

    # ------------------------------------------------------------------ background builds

    def _schedule(self, key: KernelKey, compile_missing: bool = True) -> None:
        """Build ``key`` on the background thread, once, unless it is built or on its way."""
        if key in self._pending or key in self.kernels or self._closing:
            return
        self._pending.add(key)
        future = self._background.run(self._build_in_background, key, compile_missing)
        future.add_done_callback(lambda done: self._built_in_background(key, done))

    def _build_in_background(self, key: KernelKey, compile_missing: bool) -> Source | None:
        if self._closing:
            return None
        return self.kernels.build(key, compile_missing=compile_missing)

    def _built_in_background(self, key: KernelKey, done: asyncio.Future[Any]) -> None:
        self._pending.discard(key)
        if not done.cancelled() and done.exception() is not None:
            log.error("background build of %s failed", key, exc_info=done.exception())

    @property
    def pending(self) -> int:
        """Kernels queued or building in the background."""
        return len(self._pending)

    # ------------------------------------------------------------------ the request path

    def form(self, key: BatchKey) -> Form:
        """The variant and reading of a batch key."""
        form = self._forms.get(key)
        if form is None:
            form = form_of(self.operators[key.operator], key.output, key.static)
            self._forms[key] = form
        return form

    def plan(self, form: Form, lanes: bool, rows: int, n: int) -> tuple[KernelKey, int]:
        """The built kernel for the next of ``rows`` rows of length ``n``, and how many of them
        its call takes. The exact bucket if it is built; else the cheapest built kernel that fits
        (a cover at worst), while the exact one is built in the background."""
        bucket = self.ladder.bucket_for(rows, n)
        exact = KernelKey((form.variant,), lanes, bucket)
        if exact in self.kernels:
            return exact, min(rows, bucket.rows)
        best: KernelKey | None = None
        best_cost = math.inf
        for key in (*self._kernels_of.get(form.variant, ()), *self._ready_covers):
            if key.bucket.n < n or (lanes and not key.lanes):
                continue
            calls = -(-rows // key.bucket.rows)
            cost = float(calls * (key.bucket.entries + CALL_COST_ENTRIES))
            if key.lanes and not lanes:
                cost *= UNUSED_LANES_COST
            if cost < best_cost:
                best, best_cost = key, cost
        if best is None:
            raise RuntimeError(f"no built kernel holds rows of {n}: the engine is not warm")
        if self.settings.compile_on_demand and best.bucket != bucket:  # same shape: no gain
            self._schedule(exact)
        return best, min(rows, best.bucket.rows)

    def _select(self, key: KernelKey, form: Form) -> np.ndarray:
        select = self._selectors.get((key, form))
        if select is None:
            select = selector(key, form)
            self._selectors[(key, form)] = select
        return select

    def _zero(self, key: KernelKey) -> Any:
        """A zero direction of ``key``'s shape, on the device once (lanes nobody asked for)."""
        zero = self._zeros.get(key)
        if zero is None:
            host = np.zeros((key.bucket.rows, key.bucket.n), np.float32)
            placement = self.kernels.sharding(key) or self.kernels.devices[0]
            zero = self._zeros[key] = jax.device_put(host, placement)
        return zero

    def _run(
        self, key: KernelKey, form: Form, inputs: KernelInputs, derivative: Derivative
    ) -> tuple[Outputs, float]:
        executable = self.kernels.get(key)  # built by plan(); a KeyError here is a bug, no compile
        if key.lanes:
            zero = None
            if inputs.tangent is None or inputs.cotangent is None:
                zero = self._zero(key)
            directions = (
                zero if inputs.tangent is None else inputs.tangent,
                zero if inputs.cotangent is None else inputs.cotangent,
            )
            inputs = KernelInputs(inputs.x, inputs.k, inputs.epsilon, inputs.lengths, *directions)
        started = time.perf_counter()
        outputs = executable(*arguments(key, self._select(key, form), inputs))
        jax.block_until_ready(outputs)  # device time ends here, not at the (async) dispatch
        seconds = time.perf_counter() - started
        jvp = np.asarray(outputs[1]) if derivative in ("jvp", "both") else None
        vjp = np.asarray(outputs[2]) if derivative in ("vjp", "both") else None
        return (np.asarray(outputs[0]), jvp, vjp), seconds

    async def run(
        self, key: KernelKey, form: Form, inputs: KernelInputs, derivative: Derivative
    ) -> tuple[Outputs, float]:
        """One device call of ``key``'s kernel: the outputs ``derivative`` asks for, as NumPy
        arrays of the bucket's shape, and the device time."""
        return await self._device.run(self._run, key, form, inputs, derivative)

    def close(self) -> None:
        self._closing = True
        for thread in (*self._compilers, self._background, self._device):
            thread.close()
