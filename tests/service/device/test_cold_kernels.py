"""A shape whose exact kernel was never built is answered at once by the cover kernel, while the
exact kernel builds in the background; the batches after it run on the exact kernel. Nothing
waits for a compile, and ``compile_on_demand=false`` turns the background builds off."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np

import core
from service.device.kernels import KernelKey
from tests.service.serving import ServerThread, metric, serving

COLD = {"x": [[0.5, 2.0, -1.0, 3.0]], "k": 2, "operator": "hard"}  # bucket 1x16: no exact kernel


def hard_indices(row: list[float], k: int) -> list[int]:
    """The support of the hard top-k mask: every output is 1, so ties keep ascending index order."""
    return sorted(np.argsort(row)[-k:].tolist())


def calls(server: ServerThread, bucket: str) -> float:
    return metric(
        server, f'topk_compute_duration_seconds_count{{bucket="{bucket}",operator="hard"}}'
    )


def test_a_cold_shape_is_served_by_the_cover_while_its_kernel_builds_in_the_background() -> None:
    with serving(compile_on_demand=True) as server:
        engine = server.runtime.engine
        compile_kernel = engine.kernels._compile
        compiling, release = threading.Event(), threading.Event()

        def held_compile(key: KernelKey, sharding: object) -> object:
            compiling.set()
            assert release.wait(60), "the test never released the compile"
            return compile_kernel(key, sharding)  # type: ignore[arg-type]

        engine.kernels._compile = held_compile  # type: ignore[method-assign]
        with httpx.Client(base_url=server.url, timeout=60) as client:
            try:
                for _ in range(3):  # answered by the cover while the exact kernel compiles
                    answer = client.post("/v1/topk", json=COLD)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["rows"][0]["indices"] == hard_indices(COLD["x"][0], 2)
                    assert compiling.wait(30), "the exact kernel never started compiling"
                assert engine.pending == 1  # three requests, one background build
                assert calls(server, "8x64") == 3 and calls(server, "1x16") == 0
            finally:
                release.set()  # a failed check must not leave the compile thread waiting
            deadline = time.monotonic() + 60
            while engine.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            answer = client.post("/v1/topk", json=COLD)
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"][0]["indices"] == hard_indices(COLD["x"][0], 2)
        assert calls(server, "1x16") == 1  # the exact kernel, now built
        assert metric(server, 'topk_kernel_compilations_total{phase="background"}') == 1
        assert metric(server, 'topk_kernel_compilations_total{phase="request"}') == 0


def test_with_compiling_on_demand_off_the_covers_serve_everything_and_nothing_compiles() -> None:
    with serving(compile_on_demand=False) as server, httpx.Client(base_url=server.url) as client:
        for _ in range(2):
            answer = client.post("/v1/topk", json=COLD)
            assert answer.status_code == 200, answer.text
        assert server.runtime.engine.pending == 0
        assert metric(server, 'topk_kernel_compilations_total{phase="background"}') == 0
        assert calls(server, "8x64") == 2


def test_a_batch_with_more_rows_than_its_kernel_holds_goes_in_several_calls() -> None:
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 65, 20)
    x = [rng.normal(size=int(n)).astype(np.float32).tolist() for n in lengths]
    ks = [int(rng.integers(1, n + 1)) for n in lengths]
    with (
        serving(max_rows=20, max_entries=20 * 64) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        answer = client.post("/v1/topk", json={"x": x, "k": ks, "epsilon": 0.5})
        assert answer.status_code == 200, answer.text
        assert (
            metric(server, 'topk_compute_duration_seconds_count{bucket="8x64",operator="sparse"}')
            == 3
        )
    # The core on the rows as one ragged batch (one compile, not one per length; ragged rows
    # equal unpadded ones: tests/core).
    padded = np.zeros((len(x), 64), np.float32)
    for i, row in enumerate(x):
        padded[i, : len(row)] = row
    want = np.asarray(core.sparse_topk_mask(padded, np.asarray(ks), epsilon=0.5, lengths=lengths))
    for i, (row, got) in enumerate(zip(x, answer.json()["rows"], strict=True)):
        dense = np.zeros(len(row), np.float32)
        dense[got["indices"]] = got["values"]
        np.testing.assert_allclose(dense, want[i, : len(row)], atol=2e-5)
