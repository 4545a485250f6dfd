"""A ~30 s version of ``make soak``: paced mixed load (small, batched, big and bad requests) at
80 % of the measured saturation, then a burst of big bodies; no failure, every burst body
answered, RSS and file descriptors back near where they were, one PNG of it all."""

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


def test_a_short_soak_passes_and_records_memory_and_descriptors(tmp_path: Path) -> None:
    command = [sys.executable, "load/soak.py", "--duration", "10", "--saturation-seconds", "4"]
    command += ["--sample-interval", "1", "--burst-bodies", "8", "--burst-clients", "4"]
    command += ["--settle-seconds", "3", "--users", "8", "--results", str(tmp_path)]
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["passed"] and all(result["checks"].values())
    assert result["requests"] > 0 and result["failures"] == 0
    assert result["burst"]["200"] == 8
    phases = {sample["phase"] for sample in result["samples"]}
    assert {"saturation", "soak", "burst", "settled"} <= phases
    assert all(s["rss_mib"] > 0 and s["fds"] > 0 for s in result["samples"])
    assert (tmp_path / "soak.png").stat().st_size > 0
    assert "PASS: no failed request" in (tmp_path / "soak.md").read_text()
