"""Every client mistake gets a 4xx that names the field and says why; never a 500."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator

import httpx
import pytest

from service.device.pipeline import Pipeline
from tests.service.serving import ServerThread, metric, serving


def reasons(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error", "errors"}
    assert body["error"]
    return {e["field"]: e["reason"] for e in body["errors"]}


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ({"x": [[1.0, "a"]], "k": 1}, "x[0][1]", "valid number"),
        ({"x": [[1.0, 2.0]], "k": 3}, "k", "exceeds the length 2"),
        ({"x": [[1.0, 2.0], [1.0]], "k": [1, 2]}, "k[1]", "exceeds the length 1"),
        ({"x": [[1.0, 2.0]], "k": 0}, "k", "greater than or equal to 1"),
        ({"x": [[1.0, 2.0]], "k": -1}, "k", "greater than or equal to 1"),
        ({"x": [[1.0, 2.0]], "k": True}, "k", "valid integer"),
        ({"x": [[1.0, 2.0]], "k": 1.5}, "k", "valid integer"),
        ({"x": [[1.0, 2.0]], "k": [1, 1]}, "k", "one per row (1)"),
        ({"x": [[1e39, 2.0]], "k": 1}, "x[0][0]", "finite float32"),
        ({"x": [[1.0, 2.0]], "k": 1, "tangent": [[1.0]]}, "tangent[0]", "x[0] has 2"),
        ({"x": [[1.0, 2.0]], "k": 1, "cotangent": [[1.0, 2.0], [3.0]]}, "cotangent", "x has 1"),
        ({"x": [[1.0, 2.0]], "k": 1, "tangent": [[1.0, "b"]]}, "tangent[0][1]", "valid number"),
        ({"x": [[1.0, 2.0]], "k": 1, "epsilon": 0}, "epsilon", "greater than 0"),
        ({"x": [[1.0, 2.0]], "k": 1, "epsilon": [0.1, 0.2]}, "epsilon", "one per row (1)"),
        ({"x": [[1.0, 2.0]], "k": 1, "operator": "hard", "p": 2}, "p", "does not apply"),
        ({"x": [[1.0, 2.0]], "k": 1, "p": 3.0}, "p", "is not one of"),
        ({"x": [[1.0, 2.0]], "k": 1, "solver": "magic"}, "solver", "auto"),
        ({"x": [[1.0, 2.0]], "k": 1, "operator": "median"}, "operator", "sparse"),
        ({"x": [[1.0, 2.0]], "k": 1, "output": "ranks"}, "output", "mask"),
        ({"x": [[1.0, 2.0]], "k": 1, "extra": 1}, "extra", "not permitted"),
        ({"x": [[]], "k": 1}, "x[0]", "at least one entry"),
        ({"x": [], "k": 1}, "x", "at least 1 item"),
        ({"k": 1}, "x", "required"),
        ({"x": [1.0, 2.0], "k": 1}, "x[0]", "valid array"),
        ([1, 2], "body", "object"),
    ],
)
def test_422_names_the_field(http: httpx.Client, body: object, field: str, why: str) -> None:
    response = http.post("/v1/topk", json=body)
    assert response.status_code == 422, response.text
    assert why in reasons(response)[field]


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_in_x_are_refused(http: httpx.Client, token: bytes) -> None:
    response = http.post(
        "/v1/topk",
        content=b'{"x": [[1.0, ' + token + b"]], " + b'"k": 1}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "x[0][1]" in reasons(response)


def test_malformed_json_names_the_body(http: httpx.Client) -> None:
    response = http.post(
        "/v1/topk", content=b'{"x": [[1.0]], "k": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "Invalid JSON" in reasons(response)["body"]


def test_a_body_that_is_not_json_gets_415(http: httpx.Client) -> None:
    response = http.post("/v1/topk", content=b"x=1", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in reasons(response)["content-type"]


def test_too_many_rows_and_too_long_rows_get_413(http: httpx.Client) -> None:
    response = http.post("/v1/topk", json={"x": [[1.0]] * 9, "k": 1})
    assert response.status_code == 413
    assert "at most 8" in reasons(response)["x"]
    response = http.post("/v1/topk", json={"x": [[1.0] * 65], "k": 1})
    assert response.status_code == 413
    assert "at most 64" in reasons(response)["x[0]"]


def test_k_beyond_max_k_gets_422(http: httpx.Client) -> None:
    response = http.post("/v1/topk", json={"x": [[1.0] * 64], "k": 65})
    assert response.status_code == 422
    assert "max_k" in reasons(response)["k"]


def test_unknown_paths_and_methods_use_the_same_error_body(http: httpx.Client) -> None:
    assert "path" in reasons(http.get("/v1/nothing"))
    response = http.get("/v1/topk")
    assert response.status_code == 405
    assert "path" in reasons(response)


@pytest.fixture(scope="module")
def tiny_body_server() -> Iterator[ServerThread]:
    with serving(max_body_bytes=1024, warmup_operators=("hard",), warmup_row_buckets=(1,),
                 warmup_n_buckets=(16,)) as running:  # fmt: skip
        yield running


def test_an_oversized_body_gets_413_from_its_content_length(tiny_body_server: ServerThread) -> None:
    payload = b'{"x": [[' + b"1.0, " * 400 + b'1.0]], "k": 1}'
    response = httpx.post(
        tiny_body_server.url + "/v1/topk",
        content=payload,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "at most 1024" in reasons(response)["body"]


def test_an_oversized_chunked_body_gets_413_while_streaming(tiny_body_server: ServerThread) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"x": [['
        for _ in range(100):
            yield b"1.0, " * 10
        yield b'1.0]], "k": 1}'

    response = httpx.post(
        tiny_body_server.url + "/v1/topk",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "more than 1024" in reasons(response)["body"]


def test_a_full_queue_answers_503_with_retry_after() -> None:
    with serving(
        max_queued_requests=1,
        max_queue_delay_ms=3000,
        warmup_operators=("hard",),
        warmup_row_buckets=(1,),
        warmup_n_buckets=(16,),
        retry_after_seconds=2,
    ) as server:

        async def two_at_once() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                body = {"x": [[1.0, 2.0]], "k": 1, "operator": "hard"}
                first = asyncio.ensure_future(client.post("/v1/topk", json=body))
                while server.runtime.batcher.depth == 0:
                    await asyncio.sleep(0.01)
                second = await client.post("/v1/topk", json=body)
                return [await first, second]

        first, second = asyncio.run(two_at_once())
        assert first.status_code == 200
        assert second.status_code == 503
        assert second.headers["retry-after"] == "2"
        assert "queued" in reasons(second)["request"]
        metrics = httpx.get(server.url + "/metrics").text
        assert 'topk_rejections_total{reason="queue_full"} 1.0' in metrics


@pytest.mark.parametrize("route", ["/v1/topk", "/v2/models/topk/infer"])
def test_a_compressed_body_gets_415_naming_the_encoding(http: httpx.Client, route: str) -> None:
    """A gzipped body is refused rather than misread, and so is a plain body declared gzipped."""
    if route == "/v1/topk":
        body = json.dumps({"x": [[1.0, 2.0]], "k": 1}).encode()
    else:
        tensor = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}
        body = json.dumps({"parameters": {"k": 1}, "inputs": [tensor]}).encode()
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    for content in (gzip.compress(body), body):
        response = http.post(route, content=content, headers=headers)
        assert response.status_code == 415, response.text
        assert "gzip" in reasons(response)["content-encoding"]
    plain = http.post(route, content=body, headers={"content-type": "application/json"})
    assert plain.status_code == 200, plain.text


@pytest.mark.parametrize("route", ["/v1/topk", "/v2/models/topk/infer"])
def test_a_server_fault_is_a_500_counted_with_its_operator(
    server: ServerThread, http: httpx.Client, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault after the request was read (here: the batch's host work) is never the client's:
    500, and counted under the operator that was asked for, not "unknown"."""

    async def failing(self: Pipeline, key: object, items: list[object]) -> list[BaseException]:
        return [ArithmeticError("the kernel returned a non-finite value") for _ in items]

    monkeypatch.setattr(Pipeline, "__call__", failing)
    sample = f'topk_requests_total{{operator="hard",route="{route}",status="500"}}'
    before = metric(server, sample)
    if route == "/v1/topk":
        response = http.post(route, json={"x": [[1.0, 2.0]], "k": 1, "operator": "hard"})
    else:
        tensor = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}
        request = {"parameters": {"k": 1, "operator": "hard"}, "inputs": [tensor]}
        response = http.post(route, json=request)
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error", "errors": []}
    assert metric(server, sample) == before + 1
