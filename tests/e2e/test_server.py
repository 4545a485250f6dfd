"""The server in its own process on a free port, driven over real HTTP: as ``python -m service``
runs it (the protocol gate answers small requests), and under plain uvicorn
(``uvicorn --factory service.app:create_app``: the ASGI gate alone, the protocol module never
imported).

Concurrent requests of mixed shapes, operators and outputs are checked against the core called
directly in this process; the persistent compilation cache must have been written; SIGTERM must
drain and exit cleanly.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jax
import numpy as np
import pytest

import core
from api.client import AsyncTopKClient
from api.models import TopKResponse
from tests.conftest import TEST_COVER

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(
        self, process: subprocess.Popen[bytes], url: str, cache: Path, grpc_url: str
    ) -> None:
        self.process, self.url, self.cache, self.grpc_url = process, url, cache, grpc_url


COMMANDS = {
    "python -m service": ["-m", "service", "--host", "127.0.0.1", "--port"],
    "plain uvicorn": [
        "-m", "uvicorn", "--factory", "service.app:create_app", "--lifespan", "on",
        "--no-access-log", "--host", "127.0.0.1", "--port",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def cache(kernel_cache: Path) -> Path:
    """One compilation cache for every server: the first one compiles, the others load."""
    return kernel_cache


@pytest.fixture(scope="module", params=list(COMMANDS))
def server(request: pytest.FixtureRequest, cache: Path) -> Iterator[Server]:
    port, grpc_port = free_port(), free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOPK_")},
        "PYTHONPATH": str(ROOT),
        "TOPK_GRPC_PORT": str(grpc_port),
        "TOPK_ROW_BUCKETS": "2,8",
        "TOPK_N_BUCKETS": "16,32",
        "TOPK_COVER_BUCKETS": TEST_COVER,  # the session's cover: one compile for every server
        "TOPK_MAX_ROWS": "4",
        "TOPK_MAX_N": "32",
        "TOPK_MAX_K": "32",
        "TOPK_MAX_BATCH_ROWS": "8",
        "TOPK_COMPILATION_CACHE_DIR": str(cache),
        "TOPK_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, *COMMANDS[request.param], str(port)], cwd=ROOT, env=environment
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
        yield Server(process, url, cache, f"127.0.0.1:{grpc_port}")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@jax.jit
def sparse_reference(x: jax.Array, k: jax.Array, epsilon: jax.Array) -> jax.Array:
    return core.sparse_topk_mask(x, k, epsilon=epsilon)


@jax.jit
def hard_reference(x: jax.Array, k: jax.Array) -> jax.Array:
    return core.hard_topk_mask(x, k)


def reference(operator: str, x: np.ndarray, k: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
    """The core on each row alone, unpadded (one compilation per distinct row length)."""
    rows = []
    for row, k_row, eps_row in zip(x, k, epsilon, strict=True):
        if operator == "sparse":
            rows.append(sparse_reference(row, k_row, eps_row))
        else:
            rows.append(hard_reference(row, k_row))
    return np.asarray(rows)


def test_concurrent_mixed_requests_match_the_core(server: Server) -> None:
    rng = np.random.default_rng(7)
    cases = []
    for i in range(48):
        rows = int(rng.integers(1, 5))
        n = int(rng.choice([5, 12, 30]))
        x = rng.normal(size=(rows, n)).astype(np.float32)
        k = rng.integers(1, n + 1, size=rows).astype(np.int32)
        epsilon = rng.choice(np.array([0.05, 0.3, 1.0], np.float32), size=rows)
        cases.append(("sparse" if i % 4 else "hard", x, k, epsilon))

    async def send_all() -> list[TopKResponse]:
        async with AsyncTopKClient(server.url, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.topk(
                        x.tolist(),
                        k.tolist(),
                        operator=operator,
                        epsilon=epsilon.tolist() if operator == "sparse" else None,
                    )
                    for operator, x, k, epsilon in cases
                )
            )

    answers = asyncio.run(send_all())
    for (operator, x, k, epsilon), answer in zip(cases, answers, strict=True):
        want = reference(operator, x, k, epsilon)
        got = np.array([row.dense() for row in answer.rows], np.float32)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert [row.k for row in answer.rows] == k.tolist()
        assert [row.n for row in answer.rows] == [x.shape[1]] * x.shape[0]


def counter(metrics: str, name: str, phase: str) -> float:
    found = re.search(rf'^{name}{{phase="{phase}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_compilation_cache_is_written_and_read(
    server: Server, request: pytest.FixtureRequest
) -> None:
    assert any(path.is_file() for path in server.cache.rglob("*"))
    assert any((server.cache / "executables").glob("*.xla"))
    metrics = httpx.get(server.url + "/metrics").text
    assert "topk_jax_cache_misses_total" in metrics
    loaded = counter(metrics, "topk_kernel_loads_total", "warmup")
    compiled = counter(metrics, "topk_kernel_compilations_total", "warmup")
    assert loaded + compiled == 1  # one cover, built or loaded before ready
    assert counter(metrics, "topk_kernel_compilations_total", "request") == 0
    if request.node.callspec.params["server"] == "plain uvicorn":  # started after the other one
        assert loaded == 1, "the cover was not loaded from the first server's store"
        # and the exact kernels the first server built for its requests, in the background: after
        # ready, on the background thread (it may not have reached them when this test begins)
        awaited(server, "topk_kernel_loads_total", "no stored exact kernel was loaded")
    else:
        # The first server builds exact kernels in the background (at a low priority), and only
        # built ones are stored: the next server's loads need one stored before this one stops.
        awaited(server, "topk_kernel_compilations_total", "no exact kernel was built")


def awaited(server: Server, name: str, why: str) -> None:
    """Wait up to 120 s for ``name{phase="background"}`` to count one (a busy test worker slows
    the background thread down)."""
    deadline = time.monotonic() + 120
    while counter(httpx.get(server.url + "/metrics").text, name, "background") == 0:
        assert time.monotonic() < deadline, why
        time.sleep(0.2)


def test_oip_over_grpc_answers_beside_http(server: Server) -> None:
    """The gRPC server runs on the server's own loop (uvloop under ``python -m service``)."""
    import tritonclient.grpc as triton

    x = np.array([[0.5, 3.0, -1.0, 2.0]], np.float32)
    with triton.InferenceServerClient(server.grpc_url) as client:
        assert client.is_server_ready()
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("topk", [tensor], parameters={"k": 2, "operator": "hard"})
    np.testing.assert_array_equal(result.as_numpy("indices"), [[1, 3]])


def test_sigterm_drains_and_exits_cleanly(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit too.
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
