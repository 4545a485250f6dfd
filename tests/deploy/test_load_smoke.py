"""A ~20 s smoke run of ``make load``: real server process, real Locust process, gate passes.

Locust runs as a subprocess (gevent monkey-patches the process that imports it), so this test
never imports it; it only checks that it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None or importlib.util.find_spec("matplotlib") is None,
    reason="locust and matplotlib are dev dependencies of the load tests",
)


def test_router_smoke_run_passes_its_gate_and_writes_results(tmp_path: Path) -> None:
    command = [sys.executable, "load/run.py", "--scenario", "router", "--duration", "20"]
    command += ["--users", "2", "--results", str(tmp_path)]
    # Bounded: warm-up (a cold compilation cache on a slow box) + 20 s of load + shutdown.
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for name in ("router_stats.csv", "router_stats_history.csv", "router.png", "router.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    stats = json.loads((tmp_path / "router.json").read_text())
    assert sum(entry["num_requests"] for entry in stats) > 0
    assert sum(entry["num_failures"] for entry in stats) == 0
    report = (tmp_path / "router.md").read_text()
    assert "GATE PASS" in report
    assert "topk_request_duration_seconds" in report
