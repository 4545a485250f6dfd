"""The batch axis is sharded across local devices: 4 forced host devices, in a fresh process.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX starts, and this test
process already runs JAX on one device, so the checks run in a subprocess
(``tests/service/device/sharded_check.py``): sharded kernels give the single-device results and the core's,
and the app answers the same without compiling on the request path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_sharded_kernels_and_app_equal_the_single_device_ones(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "XDG_CACHE_HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.service.device.sharded_check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "sharded ok" in done.stdout
