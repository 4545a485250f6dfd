"""Per-request Prometheus metrics that cost a list append or an integer add on the hot path.

``prometheus_client``'s ``Histogram.observe`` takes a lock per bucket and per sum and walks the
bucket bounds in Python, ≈ 1 µs per call; with two histograms and a counter per request that was
≈ 3 µs of the event loop's ≈ 40 µs budget for a small request. These collectors keep the raw
observations until a scrape (or until a few thousand have piled up) and fold them into bucket
counts with NumPy in one go. The exposition is the same text as ``prometheus_client``'s own
``Histogram`` and ``Counter`` (the ``_created`` series aside); a test checks it on random values.

They are not thread-safe: only the event loop's thread observes and scrapes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

C = TypeVar("C")
FOLD_AFTER = 4096  # observations held before they are folded, so memory stays bounded


class HistogramChild:
    """One label set of a :class:`BufferedHistogram`."""

    __slots__ = ("_bounds", "_counts", "_pending", "_sum", "observe")

    observe: Callable[[float], None]

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last is the +Inf bucket
        self._sum = 0.0
        self._pending: list[float] = []
        self.observe = self._pending.append  # the hot path: no Python frame at all

    def fold(self) -> None:
        pending = self._pending
        if pending:
            values = np.array(pending, dtype=np.float64)
            pending.clear()
            # Bucket i counts bound[i-1] < value <= bound[i], Prometheus's "le" semantics.
            bucket = np.searchsorted(self._bounds, values, side="left")
            self._counts += np.bincount(bucket, minlength=len(self._counts))
            self._sum += float(values.sum())

    def maybe_fold(self) -> None:
        if len(self._pending) >= FOLD_AFTER:
            self.fold()

    def cumulative(self) -> tuple[list[int], int, float]:
        self.fold()
        cumulative = np.cumsum(self._counts).tolist()
        return cumulative, cumulative[-1], self._sum


class _Labelled(Collector, Generic[C]):
    """A metric family: one child per label set, made on first use."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        new_child: Callable[[], C],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._new_child = new_child
        self._children: dict[tuple[str, ...], C] = {}
        if not self.labelnames:
            self._children[()] = new_child()
        registry.register(self)

    def labels(self, *values: str) -> C:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child


class BufferedHistogram(_Labelled[HistogramChild]):
    """A histogram with ``labels(...).observe(value)`` like ``prometheus_client.Histogram``.

    Call :meth:`maybe_fold` now and then (the service does it once per batch) to bound memory.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        self._bounds = np.array(bounds, dtype=np.float64)
        super().__init__(
            name, documentation, labelnames, registry, lambda: HistogramChild(self._bounds)
        )

    def observe(self, value: float) -> None:
        """For a histogram without labels."""
        self._children[()].observe(value)

    def maybe_fold(self) -> None:
        for child in self._children.values():
            child.maybe_fold()

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            cumulative, count, total = child.cumulative()
            bounds = [*(floatToGoString(b) for b in self._bounds.tolist()), "+Inf"]
            family.add_metric(list(key), list(zip(bounds, cumulative, strict=True)), total)
            assert count == cumulative[-1]
        yield family


class CounterChild:
    """One label set of a :class:`BufferedCounter`: a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class BufferedCounter(_Labelled[CounterChild]):
    """A counter with ``labels(...).inc()``; hot paths may add to ``child.value`` directly."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        registry: CollectorRegistry,
    ) -> None:
        super().__init__(
            name.removesuffix("_total"), documentation, labelnames, registry, CounterChild
        )

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            family.add_metric(list(key), child.value)
        yield family
