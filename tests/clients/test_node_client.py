"""The Node.js client (``clients/node``) against a live ``python -m service``, with ``node --test``.

One server process on a free port with a one-bucket ladder (two kernels to warm), then every
``clients/node/test/*.test.js`` file with ``TOPK_BASE_URL`` pointing at it. The Node tests check
numbers (hard top-k indices, a float64 oracle of the sparse mask and its JVP, PAV, OIP binary
against ``/v1/topk`` bit for bit), so this test fails on any of their failures, and also if any
of them was skipped or none ran. Without ``node`` the test is skipped, except in CI, where
``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_COVER

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "node"
NODE_MAJOR_MINIMUM = 18


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is missing in CI: .ci/run installs it (apt-get install nodejs)")
        pytest.skip("node is not installed (apt-get install nodejs)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= NODE_MAJOR_MINIMUM, f"the client needs Node >= 18.19, found {version.stdout}"
    return node


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(kernel_cache: Path) -> Iterator[str]:
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOPK_")},
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        "TOPK_ROW_BUCKETS": "4",
        "TOPK_N_BUCKETS": "16",
        "TOPK_COVER_BUCKETS": TEST_COVER,  # the session's cover: one compile for every server
        "TOPK_MAX_ROWS": "4",
        "TOPK_MAX_N": "16",
        "TOPK_MAX_K": "16",
        "TOPK_MAX_BATCH_ROWS": "4",
        "TOPK_COMPILATION_CACHE_DIR": str(kernel_cache),
        "TOPK_LOG_LEVEL": "warning",
        "TOPK_GRPC_PORT": "",  # HTTP only: no gRPC port to collide with another server's
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=environment,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, "the server exited during start-up"
            assert time.monotonic() < deadline, "the server did not get ready in 600 s"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tap_count(output: str, name: str) -> int:
    match = re.search(rf"^# {name} (\d+)$", output, flags=re.M)
    assert match is not None, f"no '# {name}' line in node's TAP output:\n{output[-3000:]}"
    return int(match.group(1))


def test_node_client_against_a_live_server(server_url: str) -> None:
    node = node_binary()
    files = sorted(str(path) for path in (CLIENT / "test").glob("*.test.js"))
    assert len(files) >= 3, files
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=CLIENT,
        env={**os.environ, "TOPK_BASE_URL": server_url},
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"node --test failed:\n{output[-6000:]}"
    assert tap_count(output, "fail") == 0, output[-6000:]
    assert tap_count(output, "skipped") == 0, "a live test was skipped:\n" + output[-6000:]
    assert tap_count(output, "pass") >= 25, output[-6000:]
