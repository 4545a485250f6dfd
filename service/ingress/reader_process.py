"""The child process that reads big JSON bodies, so that their parsing never holds the server's GIL.

The event loop answers every small request and every refusal judged on headers, and it needs the
GIL to do so. Decoding a 256 × 1024 ``/v1/topk`` JSON body (2.2 MB) holds it in single C calls:
orjson ~10 ms, NumPy's layout of the 256 lists ~4 ms, and the generation-0 collections that the
256 new lists trigger walk all their 262,144 entries (5–8 ms each). Measured with a loop-lag
sampler during bench/mixed.py's mix (64 clients of such bodies beside 256 clients of 1 × 64
requests, 2 CPUs): every loop lag above 48 ms fell inside one of these decodes on the bodies'
thread (35–50 ms of wall time each on the loaded machine), and the 503 that a probe's headers get
took p50 7 ms, p99 48–53 ms. Pacing the thread (:mod:`service.ingress.pacing`) bounds how often
this happens, not how long each one lasts.

So a body above 64 KiB that must be parsed (JSON; an OIP binary tensor is a view of the body, no
parse) is read by the same code, :meth:`~service.ingress.gate.Ingress.decode` of an ingress built
from the same settings, in one child process: this process only copies the body out and the work
unit's arrays back (a 1 MB matrix unpickles in ~0.2 ms), both outside the GIL's long holds. The
child answers exactly what the parent would, refusals included (an :class:`ApiError` pickles).

The child runs at a lower priority (:data:`CHILD_NICENESS`), so that on a busy machine it waits
for the CPU rather than the event loop. It is started by the first big body and reads the ones
after it once it is up (the import takes ~1 s and ~170 MB, JAX's modules included, though it
never runs JAX); until then, and if it ever dies, the bodies' thread reads the body itself, as it
would with ``TOPK_BIG_BODY_READER=thread``, and a dead child is started again by the next big
body.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.device.work import WorkUnit
    from service.ingress.gate import Endpoint, Ingress
    from service.ingress.headers import RequestHeaders
    from service.settings import Settings

log = logging.getLogger(__name__)

Decode = Callable[["Endpoint", "RequestHeaders", bytes], "tuple[WorkUnit, Any]"]

_child: Ingress | None = None  # in the child: the ingress that reads the bodies

# The child yields the CPU to the event loop: on 2 shared CPUs, a runnable loop waited for a CPU
# 20-29 % of the time (bench/RESULTS.md, "The 503's tail"). Measured in one 3-round run of
# bench/mixed.py against the same tree at niceness 0: the 503's p99 14.7 vs 25.6 ms with the big
# clients alone, 39.6 vs 48.2 ms in the mix; big requests served in the mix 3.4 vs 4.2/s.
CHILD_NICENESS = 10


def _start_child(settings: Settings) -> None:
    global _child
    from service.ingress.gate import Ingress  # here: the parent's gate imports this module
    from service.runtime import ServiceRuntime

    _child = Ingress(ServiceRuntime(settings))
    if hasattr(os, "nice"):
        os.nice(CHILD_NICENESS)


def _child_ready() -> bool:
    return _child is not None


def _child_decode(route: str, headers: RequestHeaders, body: bytes) -> tuple[WorkUnit, Any]:
    assert _child is not None
    endpoint = _child.endpoint(route)
    assert endpoint is not None
    return _child.decode(endpoint, headers, body)


class ReaderProcess:
    """:meth:`decode` is :meth:`Ingress.decode` run in the child when it is up (``local``, the
    parent's own, otherwise). Called on the bodies' thread, one body at a time."""

    def __init__(self, settings: Settings, local: Decode) -> None:
        self.settings = settings
        self.local = local
        self.enabled = settings.big_body_reader == "process"
        self.decoded = 0  # bodies the child has read (tests and the bench read it)
        self._pool: ProcessPoolExecutor | None = None
        self._up: Future[bool] | None = None
        self._lock = threading.Lock()
        self._closed = False

    def decode(
        self, endpoint: Endpoint, headers: RequestHeaders, body: bytes
    ) -> tuple[WorkUnit, Any]:
        if not self.enabled or headers.header_length is not None:  # binary OIP: nothing to parse
            return self.local(endpoint, headers, body)
        pool = self._running()
        if pool is None:
            return self.local(endpoint, headers, body)
        try:
            read = pool.submit(_child_decode, endpoint.route, headers, body)
            error = read.exception()
        except BrokenProcessPool as broken:
            error = broken
        if isinstance(error, BrokenProcessPool):
            log.warning("the body reader process died; reading this body here, and starting anew")
            self._discard(pool)
            return self.local(endpoint, headers, body)
        self.decoded += 1
        if error is not None:  # a refusal (ApiError), or a fault the parent would have had too
            raise error
        return read.result()

    def _running(self) -> ProcessPoolExecutor | None:
        """The pool if its child is up; else None, having started one if there is none."""
        with self._lock:
            if self._closed:
                return None
            if self._pool is None:
                context = multiprocessing.get_context("spawn")  # never fork a process running XLA
                try:
                    self._pool = ProcessPoolExecutor(
                        1, mp_context=context, initializer=_start_child, initargs=(self.settings,)
                    )
                    self._up = self._pool.submit(_child_ready)
                except OSError:  # e.g. no /dev/shm for its locks: every body is read here
                    log.exception("the body reader process cannot start; reading bodies here")
                    self.enabled = False
                    self._pool = self._up = None
                return None
            up = self._up
            assert up is not None
            if not up.done():
                return None
            if up.exception() is not None:  # it could not start: say why once, read here
                log.error("the body reader process failed to start", exc_info=up.exception())
                self.enabled = False
                return None
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = self._up = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the child (the app's lifespan ends); bodies read after this are read locally."""
        with self._lock:
            self._closed = True
            pool, self._pool, self._up = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
