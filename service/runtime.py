"""Everything one running app owns, started and stopped by its lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Literal

from service.device.assembly import Answer
from service.device.batcher import Batcher
from service.device.engine import Engine
from service.device.kernels import KernelKey, Source
from service.device.operators import BoundOperator, bind_operators
from service.device.pipeline import Pipeline
from service.device.work import BatchKey, WorkUnit
from service.observability.build_info import build_info
from service.observability.compile_events import start_counting
from service.observability.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger(__name__)

State = Literal["starting", "warming", "ready", "failed", "draining", "stopped"]


class ServiceRuntime:
    """Settings, metrics, engine, batcher and readiness of one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.operators: dict[str, BoundOperator] = bind_operators(settings.p_values)
        self.state: State = "starting"
        self.failure: str | None = None
        self._engine: Engine | None = None
        self._pipeline: Pipeline | None = None
        self._batcher: Batcher[BatchKey, WorkUnit, Answer] | None = None
        self._warmup: asyncio.Task[None] | None = None
        self.metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def queue_full(self) -> bool:
        """Whether the batcher would refuse any request now (False before it starts)."""
        return self._batcher is not None and self._batcher.full

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the engine starts with the app's lifespan")
        return self._engine

    @property
    def batcher(self) -> Batcher[BatchKey, WorkUnit, Answer]:
        if self._batcher is None:
            raise RuntimeError("the batcher starts with the app's lifespan")
        return self._batcher

    def _on_built(self, _key: KernelKey, _seconds: float, source: Source, phase: str) -> None:
        if source == "compiled":
            self.metrics.kernel_compilations.labels(phase).inc()
        else:
            self.metrics.kernel_loads.labels(phase).inc()

    async def start(self) -> None:
        """Configure JAX, build the engine and the batcher, and start warming up in the background.

        The port is bound meanwhile; ``/readyz`` stays 503 until the cover kernels are built.
        """
        s = self.settings
        start_counting()
        self.metrics.record_build(build_info())
        self._engine = Engine(s, self.operators, on_built=self._on_built)
        self._pipeline = Pipeline(self._engine, self.metrics)
        self._batcher = Batcher(
            self._pipeline,
            max_batch_rows=s.max_batch_rows,
            max_delay=s.max_queue_delay_ms / 1000.0,
            max_queued=s.max_queued_requests,
            max_queued_cost=s.max_queued_elements,
            max_concurrent_batches=s.max_concurrent_batches,
            batching=s.batching,
            observe_wait=self.metrics.queue_seconds.observe,
            prepare=self._pipeline.prepare,
        )
        self.metrics.track_queue_depth(lambda: self.batcher.depth)
        self.metrics.kernels_pending.set_function(lambda: self.engine.pending)
        self._batcher.start()
        self.state = "warming"
        self._warmup = asyncio.get_running_loop().create_task(self._warm_up())

    async def _warm_up(self) -> None:
        try:
            await self.engine.warm_up()
        except Exception as error:  # readiness reports it; liveness stays up for inspection
            log.exception("warm-up failed")
            self.failure = f"{type(error).__name__}: {error}"
            self.state = "failed"
        else:
            # Everything alive now (JAX, XLA executables, modules) lives as long as the process: move
            # it out of the collector's sight, so that full collections triggered by per-request
            # garbage do not rescan it (those scans were the largest source of tail latency).
            gc.freeze()
            if self.state == "warming":
                self.state = "ready"

    async def wait_ready(self) -> None:
        """Wait for the warm-up to end (tests and the bench use it)."""
        if self._warmup is not None:
            await asyncio.shield(self._warmup)

    def begin_drain(self) -> None:
        """Readiness goes false first, so that load balancers stop routing here; requests are
        still taken until the batcher closes (see ``python -m service``)."""
        if self.state != "stopped":
            self.state = "draining"

    async def stop(self) -> None:
        """Drain: refuse new requests, finish the queued ones, then stop the threads."""
        self.begin_drain()
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        if self._batcher is not None:
            await self._batcher.close(drain=True)
        if self._pipeline is not None:
            self._pipeline.close()
        if self._engine is not None:
            # Joining the threads may wait for a compile in progress: not on the event loop.
            await asyncio.to_thread(self._engine.close)
        self.state = "stopped"
