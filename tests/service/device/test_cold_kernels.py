"""A request whose kernel was not warmed up compiles it on the compile thread, and warm kernels
keep being served meanwhile; with compiling on demand off it gets a 503 naming the reason."""

from __future__ import annotations

import concurrent.futures
import threading

import httpx
import numpy as np

from service.device.kernels import KernelKey
from tests.service.serving import metric, serving

WARM = {"x": [[0.5, 2.0, -1.0, 3.0]], "k": 2, "operator": "hard"}  # n bucket 16: warmed up
COLD = {"x": [list(np.linspace(-1.0, 1.0, 40))], "k": 3, "operator": "hard"}  # n bucket 64: cold
ONE_KERNEL = {"warmup_operators": ("hard",), "warmup_row_buckets": (1,), "warmup_n_buckets": (16,)}


def hard_indices(row: list[float], k: int) -> list[int]:
    """The support of the hard top-k mask: every output is 1, so ties keep ascending index order."""
    return sorted(np.argsort(row)[-k:].tolist())


def test_warm_requests_are_served_while_a_cold_kernel_compiles() -> None:
    with serving(**ONE_KERNEL) as server:
        kernels = server.runtime.engine.kernels
        compile_kernel = kernels._compile
        compiling, release = threading.Event(), threading.Event()

        def held_compile(key: KernelKey) -> object:
            if key.bucket.n == 64:  # the cold request's kernel: hold it until the test says so
                compiling.set()
                assert release.wait(60), "the test never released the compile"
            return compile_kernel(key)

        kernels._compile = held_compile  # type: ignore[method-assign]
        compiles_before = metric(server, 'topk_kernel_compilations_total{phase="request"}')
        with (
            httpx.Client(base_url=server.url, timeout=60) as client,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            try:
                cold = pool.submit(client.post, "/v1/topk", json=COLD)
                assert compiling.wait(30), "the cold kernel never started compiling"
                for _ in range(3):  # served while the cold kernel is still compiling
                    warm = client.post("/v1/topk", json=WARM)
                    assert warm.status_code == 200, warm.text
                    assert warm.json()["rows"][0]["indices"] == hard_indices(WARM["x"][0], 2)
                assert not cold.done()
            finally:
                release.set()  # a failed check must not leave the compile thread waiting
            answer = cold.result(timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"][0]["indices"] == hard_indices(COLD["x"][0], 3)
        compiles = metric(server, 'topk_kernel_compilations_total{phase="request"}')
        assert compiles == compiles_before + 1


def test_a_cold_kernel_with_compiling_on_demand_off_is_503_not_warm() -> None:
    with serving(compile_on_demand=False, **ONE_KERNEL) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            refused = client.post("/v1/topk", json=COLD)
            warm = client.post("/v1/topk", json=WARM)
        assert refused.status_code == 503, refused.text
        assert "compile_on_demand is off" in refused.text
        assert "retry-after" in refused.headers
        assert warm.status_code == 200, warm.text
        assert metric(server, 'topk_rejections_total{reason="not_warm"}') == 1
