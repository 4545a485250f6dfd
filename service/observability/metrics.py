"""Prometheus metrics of one app, in the app's own registry (never the global one).

Names follow Prometheus conventions: a ``topk_`` prefix, base units (seconds), ``_total`` counters.
Latency buckets are finer than the client defaults because a warm kernel answers in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from service.observability.buffered_metrics import BufferedCounter, BufferedHistogram
from service.observability.compile_events import compile_stats

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
BUILD_LABELS = (
    "version", "jax_version", "jaxlib_version", "backend", "device_count", "device_kind",
)  # fmt: skip


class _CompileCollector(Collector):
    """Exports the process-wide JAX compile counters at scrape time."""

    def collect(self) -> Iterator[Metric]:
        stats = compile_stats()
        yield CounterMetricFamily(
            "topk_xla_compilations",
            "XLA backend compile requests (including loads from the persistent cache).",
            value=stats.compilations,
        )
        yield CounterMetricFamily(
            "topk_xla_compile_seconds", "Time spent in XLA backend compiles.", stats.compile_seconds
        )
        yield CounterMetricFamily(
            "topk_jax_cache_hits", "Persistent compilation cache hits.", value=stats.cache_hits
        )
        yield CounterMetricFamily(
            "topk_jax_cache_misses",
            "Persistent compilation cache misses.",
            value=stats.cache_misses,
        )


class ServiceMetrics:
    """Every metric of one app. ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The three observed on every request are buffered (service/buffered_metrics.py).
        self.requests = BufferedCounter(
            "topk_requests",
            'Requests by route, operator ("unknown" when the body was not understood) and status.',
            ["route", "operator", "status"],
            registry=r,
        )
        self.rejections = Counter(
            "topk_rejections", "Refused requests by reason.", ["reason"], registry=r
        )
        self.request_seconds = BufferedHistogram(
            "topk_request_duration_seconds",
            "Time in the server, body read to response bytes.",
            ["operator"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = BufferedHistogram(
            "topk_queue_duration_seconds",
            "Time a request waited in the batcher's queue.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "topk_compute_duration_seconds",
            "Device time of one call (until its results are ready); a batch may take several.",
            ["operator", "bucket"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "topk_batch_rows",
            "Real rows in one device call.",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "topk_batch_requests",
            "Requests coalesced into one device call.",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "topk_padding_ratio",
            "Fraction of a device call's entries that are padding.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.queued_requests = Gauge(
            "topk_queued_requests", "Requests waiting in the batcher's queue.", registry=r
        )
        self.kernel_compilations = Counter(
            "topk_kernel_compilations",
            "Kernels compiled by the engine, by phase: warmup (before ready), background (after"
            " ready, off the request path); request stays 0 (nothing compiles there).",
            ["phase"],
            registry=r,
        )
        self.open_connections = Gauge(
            "topk_open_connections",
            "HTTP connections open (the connection guard's count).",
            registry=r,
        )
        self.body_bytes_in_flight = Gauge(
            "topk_body_bytes_in_flight",
            "Bytes of bodies above 64 KiB being read, queued or answered (the admission budget).",
            registry=r,
        )
        for phase in ("warmup", "background", "request"):
            self.kernel_compilations.labels(phase)
        self.kernel_loads = Counter(
            "topk_kernel_loads",
            "Kernels loaded from the executable store instead of compiled, by phase.",
            ["phase"],
            registry=r,
        )
        self.kernels_pending = Gauge(
            "topk_kernels_pending",
            "Exact kernels queued or building in the background.",
            registry=r,
        )
        self.ready = Gauge("topk_ready", "1 when warm and not draining.", registry=r)
        self.build_info = Gauge(
            "topk_build_info",
            "Always 1; the labels say what is running.",
            list(BUILD_LABELS),
            registry=r,
        )
        r.register(_CompileCollector())
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def count_request(self, route: str, operator: str, status: int, seconds: float) -> None:
        """One answered request; the 200s also time their latency, the 4xx count as rejections."""
        children = self._request_children.get((route, operator, status))
        if children is None:  # label lookups cost more than the increments: keep the children
            children = (
                self.requests.labels(route, operator, str(status)),
                self.request_seconds.labels(operator) if status == 200 else None,
                self.rejections.labels(f"http_{status}")
                if status in (401, 413, 415, 422)
                else None,
            )
            self._request_children[(route, operator, status)] = children
        total, latency, rejected = children
        total.inc()
        if latency is not None:
            latency.observe(seconds)
        if rejected is not None:
            rejected.inc()

    def fold(self) -> None:
        """Bound the memory of the buffered per-request metrics (call once per batch)."""
        self.request_seconds.maybe_fold()
        self.queue_seconds.maybe_fold()

    def record_build(self, info: dict[str, str]) -> None:
        """Set ``topk_build_info`` (call once JAX is configured, so the backend is the real one)."""
        self.build_info.labels(*(info[label] for label in BUILD_LABELS)).set(1)

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time instead of updating it on every request."""
        self.queued_requests.set_function(depth)

    def track_connections(self, connections: Sized) -> None:
        """Read the number of open connections at scrape time."""
        self.open_connections.set_function(lambda: len(connections))

    def refuse(self, reason: str) -> None:
        """A request (or a connection) refused before it reached the ingress."""
        self.rejections.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
