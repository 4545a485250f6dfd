"""Liveness, readiness (warm-up and drain), /metrics and GET /v1/operators."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import httpx
import jax
import pytest

from api.models import OperatorsResponse
from service.device.kernels import CompiledKernels
from tests.service.serving import ServerThread, small_settings


def test_liveness_and_readiness_of_a_warm_server(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"live": True}
    assert http.get("/v2/health/live").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert http.get("/v2/health/ready").status_code == 200


def test_readiness_waits_for_warm_up_and_goes_false_while_draining_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    build = CompiledKernels.build

    def held_build(self: CompiledKernels, *args: Any, **kwargs: Any) -> Any:
        assert release.wait(60), "the test never released the warm-up"
        return build(self, *args, **kwargs)

    monkeypatch.setattr(CompiledKernels, "build", held_build)
    with ServerThread(small_settings(), wait_ready=False) as server:
        first = httpx.get(server.url + "/readyz")
        assert first.status_code == 503
        assert first.json()["state"] == "warming"
        assert httpx.get(server.url + "/healthz").status_code == 200  # live while warming
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # queued during the warm-up
            early = pool.submit(  # waits for the cover's compile: far beyond httpx's 5 s
                httpx.post, server.url + "/v1/topk", json={"x": [[1.0, 2.0]], "k": 1}, timeout=300
            )
            time.sleep(0.2)
            assert not early.done()
            release.set()
            answer = early.result(timeout=300)  # the cover's compile, on a shared core
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"][0]["indices"] == [1]
        deadline = time.monotonic() + 300
        while httpx.get(server.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.runtime.begin_drain()
        draining = httpx.get(server.url + "/readyz")
        assert draining.status_code == 503
        assert draining.json()["state"] == "draining"
        served = httpx.post(server.url + "/v1/topk", json={"x": [[1.0, 2.0]], "k": 1})
        assert served.status_code == 200
        assert served.json()["rows"][0]["indices"] == [1]


def test_metrics_are_prometheus_text_at_exactly_slash_metrics(http: httpx.Client) -> None:
    http.post("/v1/topk", json={"x": [[1.0, 2.0]], "k": 1})
    response = http.get("/metrics", follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "topk_requests_total",
        "topk_request_duration_seconds_bucket",
        "topk_queue_duration_seconds_bucket",
        "topk_compute_duration_seconds_bucket",
        "topk_batch_rows_bucket",
        "topk_padding_ratio_bucket",
        "topk_queued_requests",
        "topk_xla_compilations_total",
        "topk_kernel_compilations_total",
        "topk_ready 1.0",
    ):
        assert name in text, name
    # requests carry the operator that answered; build info names what is running
    assert 'topk_requests_total{operator="sparse",route="/v1/topk",status="200"}' in text
    build = next(line for line in text.splitlines() if line.startswith("topk_build_info{"))
    assert build.endswith(" 1.0")
    for label in ("version", "jax_version", "jaxlib_version", "backend", "device_count"):
        assert f'{label}="' in build, label
    assert f'jax_version="{jax.__version__}"' in build
    assert f'backend="{jax.default_backend()}"' in build


def test_operators_lists_operators_defaults_and_limits(http: httpx.Client) -> None:
    answer = OperatorsResponse.model_validate_json(http.get("/v1/operators").content)
    by_name = {op.name: op for op in answer.operators}
    assert {"sparse", "hard"} <= set(by_name)
    sparse = {p.name: p for p in by_name["sparse"].parameters}
    assert sparse["epsilon"].default == 0.1
    assert sparse["solver"].default == "auto"
    assert sparse["p"].allowed is not None
    assert len(sparse["p"].allowed) >= 1
    assert set(by_name["sparse"].outputs) == {"mask", "values", "magnitude"}
    assert answer.limits.max_rows == 8
    assert answer.limits.max_n == 64


def test_openapi_documents_the_wire_contract(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    topk = spec["paths"]["/v1/topk"]["post"]
    schema = topk["requestBody"]["content"]["application/json"]["schema"]
    assert {"x", "k", "operator", "output", "tangent", "cotangent"} <= set(schema["properties"])
    assert {"200", "413", "422", "503"} <= set(topk["responses"])
