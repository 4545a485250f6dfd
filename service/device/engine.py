"""The engine: compiled kernels per shape bucket, and the one thread that talks to the device.

Device calls (running a kernel, waiting for its results) happen on a single thread
(:class:`~service.device_thread.DeviceThread`), so executables never run concurrently and the event
loop never blocks on them. Compiling happens on a second thread of its own: a kernel compiling for
a shape that was not warmed up (seconds) does not stall the batches of warm kernels meanwhile. The engine is built and
warmed inside the app's lifespan, never at import time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from service.device.buckets import BucketLadder, ShapeBucket
from service.device.device_thread import DeviceThread
from service.device.kernels import CompiledKernels, KernelInputs, KernelKey
from service.device.operators import BoundOperator
from service.settings import Settings

log = logging.getLogger(__name__)


class BucketNotWarm(Exception):
    """The kernel was not compiled at warm-up and compiling on demand is turned off."""


class Engine:
    """Owns the executables and the device thread; :meth:`run` is one device call."""

    def __init__(
        self,
        settings: Settings,
        operators: dict[str, BoundOperator],
        on_compile: Callable[[KernelKey, float, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.operators = operators
        self.ladder = BucketLadder(settings.row_buckets, settings.n_buckets)
        self.limits = settings.limits  # built once: requests read it on the hot path
        self._on_compile = on_compile
        self._phase = "warmup"
        self.kernels = CompiledKernels(
            operators, on_compile=self._compiled, devices=settings.devices
        )
        self._device = DeviceThread("topk-device")
        self._compiler = DeviceThread("topk-compile")
        self.warm = False

    def _compiled(self, key: KernelKey, seconds: float) -> None:
        log.debug("compiled %s in %.3f s (%s)", key, seconds, self._phase)
        if self._on_compile is not None:
            self._on_compile(key, seconds, self._phase)

    def warmup_keys(self) -> Iterator[KernelKey]:
        """Every kernel the settings ask to compile at start-up."""
        s = self.settings
        for operator in s.warmup_operators:
            if operator not in self.operators:
                log.warning("warm-up skips operator %r: not in this core", operator)
                continue
            static = self.operators[operator].static({})
            for output in s.warmup_outputs:
                if output not in self.operators[operator].functions:
                    continue
                for derivative in s.warmup_derivatives:
                    for rows in s.warm_row_buckets:
                        for n in s.warm_n_buckets:
                            bucket = ShapeBucket(rows, n)
                            yield KernelKey(operator, output, derivative, static, bucket)

    async def warm_up(self) -> int:
        """Compile every warm-up kernel on the compile thread, one call each; returns how many.

        One call per kernel lets a shutdown cancel between kernels, and lets requests that arrive
        during warm-up have their own kernels compiled in between.
        """
        started = time.perf_counter()
        keys = list(self.warmup_keys())
        for key in keys:
            await self._compiler.run(self.kernels.get, key)
        self._phase = "request"
        self.warm = True
        log.info("warm-up compiled %d kernels in %.1f s", len(keys), time.perf_counter() - started)
        return len(keys)

    def _check_warm(self, key: KernelKey) -> None:
        if key not in self.kernels and self.warm and not self.settings.compile_on_demand:
            raise BucketNotWarm(f"kernel {key} is not compiled and compile_on_demand is off")

    def compile(self, key: KernelKey) -> asyncio.Future[Any] | None:
        """None if ``key``'s kernel is ready; else the future of its compile on the compile thread
        (:class:`BucketNotWarm` if compiling on demand is off)."""
        if key in self.kernels:
            return None
        self._check_warm(key)
        return self._compiler.run(self.kernels.get, key)

    def _run(self, key: KernelKey, inputs: KernelInputs) -> tuple[tuple[np.ndarray, ...], float]:
        self._check_warm(key)
        executable = self.kernels.get(key)  # compiled by compile() first; here only as a fallback
        started = time.perf_counter()
        outputs = executable(*inputs.arguments(key))
        jax.block_until_ready(outputs)  # device time ends here, not at the (async) dispatch
        seconds = time.perf_counter() - started
        return tuple(np.asarray(out) for out in outputs), seconds

    async def run(
        self, key: KernelKey, inputs: KernelInputs
    ) -> tuple[tuple[np.ndarray, ...], float]:
        """One device call of ``key``'s kernel: its outputs as NumPy arrays and the device time."""
        return await self._device.run(self._run, key, inputs)

    def close(self) -> None:
        self._compiler.close()
        self._device.close()
