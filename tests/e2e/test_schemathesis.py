"""The server against its own OpenAPI document, with schemathesis (the CLI, as a user runs it).

Every operation, every check: no 5xx (but the documented 504 of a request that set its own
``X-Request-Timeout-Ms``, see schemathesis_hooks.py), responses conform to their schemas, status
codes and content types are documented, schema-valid requests are accepted except for the
documented 413/422/504, schema-invalid ones refused. A bounded run with a fixed seed is part of
``make test``; ``make fuzz`` runs the same with many more cases (``FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.service.serving import serving

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))  # per operation and phase
MINIMUM_CASES = int(os.environ.get("FUZZ_MINIMUM_CASES", "300"))
SEED = os.environ.get("FUZZ_SEED", "20261203")


def test_the_server_honours_its_own_schema(tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    with serving() as server:
        done = subprocess.run(
            [
                str(st),
                "--config-file",
                str(HERE / "schemathesis.toml"),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "all",
                "--exclude-checks",
                "not_a_server_error",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                SEED,
                "--workers",
                "1",
                "--report",
                "json",
                "--report-dir",
                str(tmp_path),
                "--no-color",
            ],  # fmt: skip
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
                "PYTHONPATH": str(ROOT),
            },  # fmt: skip
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    output = done.stdout[-12000:] + done.stderr[-3000:]
    [report_file] = tmp_path.glob("*.json")
    report = json.loads(report_file.read_text())
    assert done.returncode == 0, output
    assert report["complete"] and not report["failures"] and not report["errors"], output
    tested = report["operations"]["tested"]
    assert tested == report["operations"]["selected"] >= 12, output
    assert report["test_cases"]["generated"] >= MINIMUM_CASES, output
