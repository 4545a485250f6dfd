"""Every metric the Grafana dashboard queries exists in a live ``/metrics`` of the app.

The app is served by uvicorn in a thread (``tests.service.serving``, small warm-up buckets) rather
than Starlette's TestClient, whose httpx backend is deprecated (a warning, hence an error here).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.service.serving import serving

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/topk-service.json"
METRIC_NAME = re.compile(r"\btopk_[a-z0-9_]+")
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    expressions += [v["definition"] for v in dashboard["templating"]["list"]]
    return {name for expr in expressions for name in METRIC_NAME.findall(expr)}


def exposed_metric_names(exposition: str) -> set[str]:
    """Sample names, plus the names a family will expose once it has samples (labelled
    counters such as ``topk_rejections`` show only their ``# TYPE`` line until first use)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total")
            names |= {base + suffix for suffix in SUFFIXES.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_json_has_panels_for_each_concern() -> None:
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for concern in ("throughput", "latency", "batch", "queue depth", "compiles", "rejections"):
        assert concern in titles


def test_every_dashboard_metric_is_exposed_by_the_app() -> None:
    with serving() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post("/v1/topk", json={"x": [[3.0, 1.0, 2.0]], "k": 1, "operator": "hard"})
        assert answer.status_code == 200
        exposition = client.get("/metrics").text
    missing = dashboard_metric_names() - exposed_metric_names(exposition)
    assert not missing, f"the dashboard queries metrics the app does not expose: {sorted(missing)}"
