"""The server-side numbers of the load report: histogram deltas and their quantiles."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")  # load/report.py draws the plot too

_spec = importlib.util.spec_from_file_location(
    "load_report", Path(__file__).resolve().parents[2] / "load" / "report.py"
)
assert _spec is not None and _spec.loader is not None
report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = report  # dataclasses look their module up there
_spec.loader.exec_module(report)


def exposition(cumulative: tuple[int, int, int], total: float) -> str:
    """One histogram with edges 1 ms, 10 ms, +Inf, split over two label sets."""
    lines = [
        "# HELP topk_request_duration_seconds t",
        "# TYPE topk_request_duration_seconds histogram",
    ]
    for operator in ("hard", "sparse"):
        for le, count in zip(("0.001", "0.01", "+Inf"), cumulative, strict=True):
            lines.append(
                f'topk_request_duration_seconds_bucket{{le="{le}",operator="{operator}"}} {count}'
            )
        lines.append(
            f'topk_request_duration_seconds_count{{operator="{operator}"}} {cumulative[-1]}'
        )
        lines.append(f'topk_request_duration_seconds_sum{{operator="{operator}"}} {total}')
    return "\n".join(lines) + "\n"


def test_delta_sums_label_sets_and_subtracts_the_before_scrape() -> None:
    delta = report.histogram_delta(
        exposition((1, 1, 1), 0.0005),
        exposition((3, 11, 11), 0.05),
        "topk_request_duration_seconds",
    )
    assert delta.count == 20
    assert delta.cumulative == (4, 20, 20)
    assert math.isclose(delta.total, 2 * (0.05 - 0.0005))


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    delta = report.HistogramDelta((0.001, 0.01, math.inf), (4.0, 20.0, 20.0), 20.0, 0.1)
    assert math.isclose(delta.quantile(0.2), 0.001)
    assert math.isclose(delta.quantile(0.6), 0.001 + 0.009 * 0.5)
    assert math.isnan(report.HistogramDelta((math.inf,), (0.0,), 0.0, 0.0).quantile(0.5))
