"""What ``load/run.py`` writes after a run: the latency plot and the Markdown report.

The report puts Locust's client-side percentiles next to the server's own histograms (the
difference between a before and an after scrape of ``/metrics``), so one can tell time spent in
the server (queue + compute) from time spent in HTTP, JSON and the load generator itself.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines or in containers
import matplotlib.pyplot as plt  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

SERVER_HISTOGRAMS = (
    ("topk_request_duration_seconds", "request (body read → response bytes)"),
    ("topk_queue_duration_seconds", "queue (waiting for a batch)"),
    ("topk_compute_duration_seconds", "compute (one device call; a batch may take several)"),
)


@dataclass(frozen=True)
class HistogramDelta:
    """Cumulative bucket counts of one histogram family, summed over its label sets."""

    upper_bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    count: float
    total: float

    def quantile(self, q: float) -> float:
        """Prometheus ``histogram_quantile``: linear interpolation inside the bucket."""
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in zip(self.upper_bounds, self.cumulative, strict=True):
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound  # beyond the last finite edge: the edge is all we know
                width = cumulative - lower_count
                fraction = (rank - lower_count) / width if width else 1.0
                return lower_bound + (bound - lower_bound) * fraction
            lower_bound, lower_count = bound, cumulative
        return lower_bound


def parse_histograms(text: str) -> dict[str, dict[float, float]]:
    """``{family: {le: cumulative count}}`` plus ``_count``/``_sum`` under le = -1 / -2."""
    histograms: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        buckets = histograms.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
            elif sample.name.endswith("_count"):
                le = -1.0
            elif sample.name.endswith("_sum"):
                le = -2.0
            else:
                continue
            buckets[le] = buckets.get(le, 0.0) + sample.value
    return histograms


def histogram_delta(before: str, after: str, name: str) -> HistogramDelta | None:
    old = parse_histograms(before).get(name, {})
    new = parse_histograms(after).get(name)
    if not new:
        return None
    bounds = tuple(sorted(le for le in new if le >= 0))
    return HistogramDelta(
        upper_bounds=bounds,
        cumulative=tuple(new[le] - old.get(le, 0.0) for le in bounds),
        count=new.get(-1.0, 0.0) - old.get(-1.0, 0.0),
        total=new.get(-2.0, 0.0) - old.get(-2.0, 0.0),
    )


def counter_delta(before: str, after: str, name: str) -> dict[str, float]:
    """Per-label-set increase of a counter family (labels joined as ``k=v,...``)."""

    def values(text: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) or "-"
                found[key] = found.get(key, 0.0) + sample.value
        return found

    old = values(before)
    return {key: value - old.get(key, 0.0) for key, value in values(after).items()}


def read_history(history_csv: Path) -> list[dict[str, str]]:
    with history_csv.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("Name") == "Aggregated"]


def read_aggregate(stats_csv: Path) -> dict[str, str]:
    with stats_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") == "Aggregated":
                return row
    return {}


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "N/A") else math.nan
    except ValueError:
        return math.nan


def plot_history(history: list[dict[str, str]], png: Path, title: str) -> None:
    """Throughput and p50/p95/p99 over time, from Locust's ``_stats_history.csv``."""
    if not history:
        return
    start = _number(history[0]["Timestamp"])
    seconds = [_number(row["Timestamp"]) - start for row in history]
    figure, (throughput, latency) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    throughput.plot(seconds, [_number(r["Requests/s"]) for r in history], label="requests/s")
    throughput.plot(seconds, [_number(r["Failures/s"]) for r in history], label="failures/s")
    throughput.set_ylabel("per second")
    throughput.legend(loc="upper left")
    for column in ("50%", "95%", "99%"):
        latency.plot(seconds, [_number(r[column]) for r in history], label=f"p{column[:-1]}")
    latency.set_ylabel("latency (ms, client side)")
    latency.set_xlabel("seconds since start")
    latency.legend(loc="upper left")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def _ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def markdown_report(
    title: str,
    aggregate: dict[str, str],
    metrics_before: str,
    metrics_after: str,
    gate_line: str,
    exit_code: int,
) -> str:
    lines = [f"# {title}", "", f"Gate: `{gate_line or 'no gate line (Locust did not finish?)'}`"]
    lines += [f"Locust exit code: {exit_code}", ""]
    lines += ["## Client side (Locust, all requests)", ""]
    lines += ["| requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |"]
    lines += ["|---|---|---|---|---|---|---|"]
    lines += [
        "| {} | {} | {:.1f} | {} | {} | {} | {:.0f} |".format(
            aggregate.get("Request Count", "0"),
            aggregate.get("Failure Count", "0"),
            _number(aggregate.get("Requests/s")),
            aggregate.get("50%", "–"),
            aggregate.get("95%", "–"),
            aggregate.get("99%", "–"),
            _number(aggregate.get("Max Response Time")),
        ),
        "",
        "Locust rounds response times to about two significant digits before its percentiles;",
        "the server histograms below are exact to their bucket edges (interpolated inside).",
        "",
        "## Server side (delta of /metrics over the run)",
        "",
        "| histogram | observations | mean ms | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, meaning in SERVER_HISTOGRAMS:
        delta = histogram_delta(metrics_before, metrics_after, name)
        if delta is None:
            lines.append(f"| {name} ({meaning}) | missing | | | | |")
            continue
        mean = delta.total / delta.count if delta.count else math.nan
        lines.append(
            f"| {name} ({meaning}) | {delta.count:.0f} | {_ms(mean)} | {_ms(delta.quantile(0.5))}"
            f" | {_ms(delta.quantile(0.95))} | {_ms(delta.quantile(0.99))} |"
        )
    rows = histogram_delta(metrics_before, metrics_after, "topk_batch_rows")
    coalesced = histogram_delta(metrics_before, metrics_after, "topk_batch_requests")
    if rows and rows.count and coalesced and coalesced.count:
        lines += [
            "",
            f"Batches: {rows.count:.0f}, mean rows per batch {rows.total / rows.count:.1f},"
            f" mean requests per batch {coalesced.total / coalesced.count:.2f}.",
        ]
    for counter in ("topk_requests", "topk_rejections", "topk_kernel_compilations"):
        moved = {
            k: v for k, v in counter_delta(metrics_before, metrics_after, counter).items() if v
        }
        summary = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(moved.items())) or "none"
        lines.append(f"- `{counter}_total` during the run: {summary}")
    lines += [
        "",
        "Client p50 minus server request p50 is the HTTP + JSON + load-generator overhead; a",
        "client p95 far above the server's means the load generator (or the shared CPU) is the",
        "bottleneck, not the service.",
        "",
    ]
    return "\n".join(lines)
