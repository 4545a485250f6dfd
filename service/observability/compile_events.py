"""Counts XLA compilations process-wide from ``jax.monitoring`` events.

``/jax/core/compile/backend_compile_duration`` fires once per backend compile request (also when the
executable comes from the persistent cache), so its count after warm-up must stay flat: that is
the "nothing compiles on the request path" invariant the tests and ``/metrics`` check. The event
name is internal to JAX; ``tests/service`` asserts that it still fires.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import jax.monitoring

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"


@dataclass(frozen=True)
class CompileStats:
    """A snapshot of the counters since the process started."""

    compilations: int
    compile_seconds: float
    cache_hits: int
    cache_misses: int


class _CompileCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._compilations = 0
        self._seconds = 0.0
        self._hits = 0
        self._misses = 0
        self._registered = False

    def ensure_registered(self) -> None:
        # JAX listeners are process-global and cannot be scoped to one app; register exactly once.
        with self._lock:
            if self._registered:
                return
            jax.monitoring.register_event_duration_secs_listener(self._on_duration)
            jax.monitoring.register_event_listener(self._on_event)
            self._registered = True

    def _on_duration(self, event: str, duration_secs: float, **_: object) -> None:
        if event == BACKEND_COMPILE_EVENT:
            with self._lock:
                self._compilations += 1
                self._seconds += duration_secs

    def _on_event(self, event: str, **_: object) -> None:
        if event in (CACHE_HIT_EVENT, CACHE_MISS_EVENT):
            with self._lock:
                if event == CACHE_HIT_EVENT:
                    self._hits += 1
                else:
                    self._misses += 1

    def snapshot(self) -> CompileStats:
        with self._lock:
            return CompileStats(self._compilations, self._seconds, self._hits, self._misses)


_COUNTER = _CompileCounter()


def start_counting() -> None:
    """Register the listeners (idempotent). Call before the first compilation to count it."""
    _COUNTER.ensure_registered()


def compile_stats() -> CompileStats:
    """The counters now."""
    return _COUNTER.snapshot()
