"""bench/gpu_check.sh in its CPU dry run: every step runs (tiny inputs) and writes its results.

The full run needs an NVIDIA GPU; the dry run keeps the script from rotting between GPU runs. Its
service starts from the session's kernel cache (tests/conftest.py), where the test servers'
8x64 cover is usually compiled already, so that the dry run adds well under a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = ("devices", "device-paths", "core-tests", "bench-core", "bench-soft", "service")


def test_dry_run_passes_every_step_and_writes_results(tmp_path: Path, kernel_cache: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_CACHE": str(kernel_cache),
        "TOPK_NOT_A_SETTING": "1",  # the script drops the caller's TOPK_* variables
    }
    env.pop("OUT", None)
    results = tmp_path / "results"
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = (results / "summary.md").read_text()
    assert done.returncode == 0, summary + done.stdout[-2000:] + done.stderr[-2000:]
    for step in (*STEPS, "bench-service"):
        assert f"| {step} | ok |" in summary, step
    assert "failed steps: 0" in summary and "skipped" not in summary
    assert "backend cpu" in (results / "devices.log").read_text()
    paths = (results / "device-paths.log").read_text()
    assert "test_pav_rows_sequential_and_lockstep_agree_with_the_oracles[gpu]" in paths
    assert "test_a_batch_crosses_to_the_device_and_back_exactly" in paths
    core_table = (results / "bench-core.md").read_text()
    assert "`lax.top_k`" in core_table and "×)" in core_table  # a ratio to lax.top_k
    assert "×)" in (results / "bench-soft.md").read_text()
    assert "| small 1x64 k=2 | 1 |" in (results / "bench-service.md").read_text()
    service = (results / "service.log").read_text()
    assert "answer ok: hard" in service and "metrics backend label: ['cpu']" in service
    assert "server exit status after SIGTERM: 0" in service
