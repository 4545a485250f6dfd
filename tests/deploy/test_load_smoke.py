"""The locustfile's default mix (every User class) for 20 s against a server with the default
settings, as ``make run`` starts it: no failed request, and nothing compiled on the request path.

Locust runs as a subprocess (gevent monkey-patches the process that imports it), so this test
never imports it; it only checks that it is installed. The server uses the default compilation
cache, so only the first run on a machine waits for the cold start. Latency is not asserted here
(the p95 budget is lifted): speed is measured in bench/ and load/, never in a timed test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None or importlib.util.find_spec("matplotlib") is None,
    reason="locust and matplotlib are dev dependencies of the load tests",
)


def sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_default_mix_against_the_default_settings_has_no_failures(tmp_path: Path) -> None:
    command = [sys.executable, "load/run.py", "--scenario", "default", "--duration", "20"]
    command += ["--users", "4", "--p95-budget-ms", "600000", "--results", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPK_")}  # the defaults
    # Bounded: a cold start on a slow box + 20 s of load + shutdown.
    completed = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for name in ("default_stats.csv", "default_stats_history.csv", "default.png", "default.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    stats = json.loads((tmp_path / "default.json").read_text())
    names = {entry["name"] for entry in stats}
    assert {"router hard", "pruning", "classification jvp+vjp"} <= names, names
    assert sum(entry["num_requests"] for entry in stats) > 0
    assert sum(entry["num_failures"] for entry in stats) == 0
    after = (tmp_path / "default_metrics_after.txt").read_text()
    assert sample(after, 'topk_kernel_compilations_total{phase="request"}') == 0
    report = (tmp_path / "default.md").read_text()
    assert "GATE PASS" in report
    assert "topk_request_duration_seconds" in report
