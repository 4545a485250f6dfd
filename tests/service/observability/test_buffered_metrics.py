"""The buffered per-request metrics expose exactly what prometheus_client's own would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from service.observability.buffered_metrics import FOLD_AFTER, BufferedCounter, BufferedHistogram
from service.observability.metrics import LATENCY_BUCKETS, ROW_BUCKETS


def exposition(registry: CollectorRegistry) -> list[str | float]:
    """The exposition's lines, but each ``_sum`` as a number rounded to 12 significant digits
    (prometheus_client adds one float at a time; a different order changes the last digits)."""
    lines: list[str | float] = []
    for line in generate_latest(registry).decode().splitlines():
        if "_created" in line:
            continue
        name, _, value = line.rpartition(" ")
        lines += [name, float(f"{float(value):.12g}")] if "_sum" in name else [line]
    return lines


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, ROW_BUCKETS])
def test_histogram_matches_prometheus_client(buckets: tuple[float, ...]) -> None:
    rng = np.random.default_rng(0)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buffered = BufferedHistogram("h", "doc", ["operator"], buckets=buckets, registry=ours)
    reference = Histogram("h", "doc", ["operator"], buckets=buckets, registry=theirs)
    # Values on every bound (the "le" edge), between bounds, above the last and at zero, over
    # more than one fold.
    top = max(buckets)
    values = np.concatenate(
        [
            np.array(buckets, dtype=float),
            rng.uniform(0, 1.5 * top, size=3 * FOLD_AFTER),
            rng.exponential(0.01, size=500),
            [0.0, 2 * top],
        ]
    )
    for i, value in enumerate(values.tolist()):
        operator = ("sparse", "soft")[i % 2]
        buffered.labels(operator).observe(value)
        reference.labels(operator).observe(value)
        if i % 1000 == 0:
            buffered.maybe_fold()
            assert exposition(ours) == exposition(theirs)
    assert exposition(ours) == exposition(theirs)


def test_unlabelled_histogram_and_counter_match_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = BufferedHistogram("q_seconds", "queue", buckets=LATENCY_BUCKETS, registry=ours)
    counter = BufferedCounter("requests", "by status", ["route", "status"], registry=ours)
    reference_histogram = Histogram("q_seconds", "queue", buckets=LATENCY_BUCKETS, registry=theirs)
    reference_counter = Counter("requests", "by status", ["route", "status"], registry=theirs)
    assert exposition(ours) == exposition(theirs)  # before anything is observed
    for i, value in enumerate(np.linspace(0, 0.03, 101).tolist()):
        histogram.observe(value)
        reference_histogram.observe(value)
        status = ("200", "422", "503")[i % 3]
        counter.labels("/v1/topk", status).inc()
        reference_counter.labels("/v1/topk", status).inc()
    assert exposition(ours) == exposition(theirs)


def test_labels_are_checked() -> None:
    registry = CollectorRegistry()
    histogram = BufferedHistogram("h", "doc", ["a"], buckets=(1.0,), registry=registry)
    counter = BufferedCounter("c", "doc", ["a", "b"], registry=registry)
    with pytest.raises(ValueError, match="labels"):
        histogram.labels("x", "y")
    with pytest.raises(ValueError, match="labels"):
        counter.labels("x")
