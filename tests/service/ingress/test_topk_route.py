"""POST /v1/topk through a real server: answers, derivatives, batching and zero recompilation."""

from __future__ import annotations

import asyncio

import httpx
import jax
import numpy as np
import orjson
import pytest

import core
from api.models import IsotonicRequest, SoftSortRequest, TopKRequest, TopKResponse
from service.observability.compile_events import compile_stats
from tests.service.serving import ServerThread, metric


def dense_mask(x: list[float], k: int, epsilon: float = 0.1) -> np.ndarray:
    return np.asarray(
        core.sparse_topk_mask(np.asarray(x, np.float32), k, epsilon=np.float32(epsilon))
    )


def test_ragged_rows_with_per_row_k_and_epsilon(http: httpx.Client) -> None:
    x = [[0.3, 2.0, -1.0, 1.9, 0.5], [4.0, 1.0, 3.0], [7.0]]
    response = http.post("/v1/topk", json={"x": x, "k": [2, 1, 1], "epsilon": [0.1, 0.5, 1.0]})
    assert response.status_code == 200, response.text
    answer = TopKResponse.model_validate_json(response.content)
    assert (answer.operator, answer.output) == ("sparse", "mask")
    for row, values, k, epsilon in zip(answer.rows, x, [2, 1, 1], [0.1, 0.5, 1.0], strict=True):
        assert (row.n, row.k) == (len(values), k)
        np.testing.assert_allclose(row.dense(), dense_mask(values, k, epsilon), atol=1e-6)
        assert row.values == sorted(row.values, reverse=True)
        assert all(v != 0 for v in row.values)


def test_hard_values_list_the_k_largest_in_descending_order(http: httpx.Client) -> None:
    x = [[0.3, 2.0, -1.0, 1.9, 0.5]]
    body = {"x": x, "k": 3, "operator": "hard", "output": "values"}
    row = http.post("/v1/topk", json=body).json()["rows"][0]
    assert row["indices"] == [1, 3, 4]
    assert row["values"] == [2.0, 1.899999976158142, 0.5] or np.allclose(
        row["values"], [2, 1.9, 0.5]
    )
    assert "jvp" not in row
    assert "vjp" not in row


def test_tangent_and_cotangent_give_jvp_on_the_support_and_a_dense_vjp(http: httpx.Client) -> None:
    x = [[0.3, 2.0, -1.0, 1.9, 0.5], [1.0, 1.2]]
    tangent = [[1.0, -1.0, 0.5, 0.0, 2.0], [0.5, 0.5]]
    cotangent = [[0.0, 1.0, 0.0, -1.0, 0.0], [1.0, 0.0]]
    body = {"x": x, "k": 2, "epsilon": 1.0, "tangent": tangent, "cotangent": cotangent}
    answer = TopKResponse.model_validate_json(http.post("/v1/topk", json=body).content)
    for row, xs, ts, cs in zip(answer.rows, x, tangent, cotangent, strict=True):

        def f(v: np.ndarray) -> np.ndarray:
            return core.sparse_topk_mask(v, 2, epsilon=np.float32(1.0))

        xs32 = np.asarray(xs, np.float32)

        _, want_jvp = jax.jvp(f, (xs32,), (np.asarray(ts, np.float32),))
        _, pullback = jax.vjp(f, xs32)
        (want_vjp,) = pullback(np.asarray(cs, np.float32))
        np.testing.assert_allclose(row.dense_jvp(), want_jvp, atol=1e-5)
        assert row.vjp is not None
        assert len(row.vjp) == len(xs)
        np.testing.assert_allclose(row.vjp, want_vjp, atol=1e-5)


def test_mixed_requests_after_warm_up_compile_nothing(server: ServerThread) -> None:
    """Within the warm buckets, any shapes, ks and epsilons reuse the warm-up's executables, on
    /v1/topk and on the OIP inference route alike."""
    rng = np.random.default_rng(1)
    bodies = []
    for i in range(40):
        rows = int(rng.integers(1, 5))
        lengths = rng.integers(1, 33, size=rows).tolist()
        x = [rng.normal(size=n).round(3).tolist() for n in lengths]
        body: dict[str, object] = {
            "x": x,
            "k": [int(rng.integers(1, n + 1)) for n in lengths],
            "operator": "sparse" if i % 3 else "hard",
        }
        if i % 3:
            body["epsilon"] = [float(e) for e in rng.uniform(0.05, 2.0, size=rows)]
        bodies.append(body)

    inferences = []
    for body in bodies[:12]:  # OIP tensors are rectangular: each row cut to the shortest
        n = min(len(row) for row in body["x"])  # type: ignore[union-attr]
        x = [row[:n] for row in body["x"]]  # type: ignore[union-attr]
        ks = [min(k, n) for k in body["k"]]  # type: ignore[union-attr]
        inputs = [
            {"name": "x", "shape": [len(x), n], "datatype": "FP32", "data": x},
            {"name": "k", "shape": [len(x)], "datatype": "INT32", "data": ks},
        ]
        inferences.append({"parameters": {"operator": body["operator"]}, "inputs": inputs})

    async def send_all() -> list[httpx.Response]:
        # max_batch_rows is 8 but warm row buckets stop at 4: send in small waves of one request
        # per key so that every batch stays within the warm buckets.
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            v1 = [await client.post("/v1/topk", json=body) for body in bodies]
            v2 = [await client.post("/v2/models/topk/infer", json=body) for body in inferences]
            return v1 + v2

    request_compiles = 'topk_kernel_compilations_total{phase="request"}'
    before = compile_stats().compilations, metric(server, request_compiles)
    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * (len(bodies) + len(inferences))
    assert (compile_stats().compilations, metric(server, request_compiles)) == before


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server: ServerThread) -> None:
    rng = np.random.default_rng(2)
    rows = [rng.normal(size=int(n)).astype(np.float32).tolist() for n in rng.integers(2, 17, 24)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/v1/topk", json={"x": [row], "k": 2}) for row in rows)
            )

    batches_before = metric(server, "topk_batch_requests_count")
    requests_before = metric(server, "topk_batch_requests_sum")
    responses = asyncio.run(send_all())
    # The core once on all rows, padded with its own length masking (one compilation, not 24).
    lengths = np.array([len(row) for row in rows])
    padded = np.zeros((len(rows), 16), np.float32)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    want = np.asarray(core.sparse_topk_mask(padded, 2, lengths=lengths))
    for response, row, expected in zip(responses, rows, want, strict=True):
        answer = TopKResponse.model_validate_json(response.content)
        np.testing.assert_allclose(answer.rows[0].dense(), expected[: len(row)], atol=1e-6)
    assert metric(server, "topk_batch_requests_sum") - requests_before == len(rows)
    assert metric(server, "topk_batch_requests_count") - batches_before < len(rows)


def test_every_output_of_every_operator_matches_the_core(http: httpx.Client) -> None:
    x = np.array([[0.3, -2.0, -1.0, 1.9, 0.5, 0.0]], np.float32)
    operators = http.get("/v1/operators").json()["operators"]
    for info in (op for op in operators if op["route"] == "/v1/topk"):
        for output in info["outputs"]:
            body: dict[str, object] = {
                "x": x.tolist(), "k": 2, "operator": info["name"], "output": output,
            }  # fmt: skip
            response = http.post("/v1/topk", json=body)
            assert response.status_code == 200, (info["name"], output, response.text)
            row = TopKResponse.model_validate_json(response.content).rows[0]
            function = getattr(core, f"{info['name']}_topk_{output}")
            want = np.asarray(function(x, 2))[0]
            np.testing.assert_allclose(row.dense(), want, atol=1e-5, err_msg=f"{info} {output}")
            assert set(row.indices) == set(np.flatnonzero(want).tolist())


def test_every_metric_family_moves_with_traffic(server: ServerThread) -> None:
    """Scrape before and after a good and a bad request: each family moved as it should."""
    ok = 'topk_requests_total{operator="hard",route="/v1/topk",status="200"}'
    bad = 'topk_requests_total{operator="unknown",route="/v1/topk",status="422"}'
    counts = (
        ok,
        bad,
        'topk_request_duration_seconds_count{operator="hard"}',
        "topk_queue_duration_seconds_count",
        "topk_batch_rows_count",
        "topk_batch_requests_count",
        "topk_padding_ratio_count",
        'topk_rejections_total{reason="http_422"}',
    )
    before = {sample: metric(server, sample) for sample in counts}
    answer = httpx.post(
        server.url + "/v1/topk", json={"x": [[3.0, 1.0, 2.0]], "k": 1, "operator": "hard"}
    )
    assert answer.status_code == 200
    refused = httpx.post(server.url + "/v1/topk", json={"x": [[1.0, 2.0]], "k": 0})
    assert refused.status_code == 422
    for sample in counts:
        assert metric(server, sample) == before[sample] + 1, sample
    text = httpx.get(server.url + "/metrics").text
    compute = [
        line
        for line in text.splitlines()
        if line.startswith("topk_compute_duration_seconds_count{")
    ]
    assert any('operator="hard"' in line and float(line.split()[-1]) >= 1 for line in compute)
    assert metric(server, "topk_xla_compilations_total") > 0  # the warm-up compiled
    assert 'topk_kernel_compilations_total{phase="warmup"}' in text
    assert "topk_jax_cache_hits_total" in text and "topk_jax_cache_misses_total" in text
    assert "topk_queued_requests 0.0" in text
    assert metric(server, "topk_ready") == 1.0
    assert "topk_build_info{" in text


def test_every_json_content_type_gets_the_same_answer_byte_for_byte(http: httpx.Client) -> None:
    bodies = [
        {"x": [[-3.0, -1.0, -2.0, 5.0]], "k": 3, "operator": "hard", "output": "values"},
        {"x": [[0.0, 1.0, -1.0]], "k": 2, "operator": "hard", "output": "values"},
        {"x": [[0.3, 2.0, -1.0, 1.9, 0.5], [4.0, 1.0]], "k": [2, 1], "epsilon": 0.5},
        {"x": [[0.3, -2.0, 1.0]], "k": 2, "output": "magnitude", "p": 2, "solver": "pav"},
    ]
    for body in bodies:
        content = orjson.dumps(body)
        plain = http.post("/v1/topk", content=content, headers={"content-type": "application/json"})
        vendor = http.post(
            "/v1/topk", content=content, headers={"content-type": "application/vnd.topk+json"}
        )
        assert plain.status_code == vendor.status_code == 200, (plain.text, vendor.text)
        assert plain.content == vendor.content
    negative = http.post("/v1/topk", json=bodies[0]).json()["rows"][0]
    assert (negative["indices"], negative["values"]) == ([3, 1, 2], [5.0, -1.0, -2.0])
    zero = http.post("/v1/topk", json=bodies[1]).json()["rows"][0]
    assert zero["indices"] == [1]  # the selected 0.0 has output 0: not in the support


def test_no_request_reaches_pydantic(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingress reads every body itself, accepted or refused: pydantic models only document
    the contract (and serve the Python client)."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a request body was parsed by pydantic")

    for model in (TopKRequest, SoftSortRequest, IsotonicRequest):
        monkeypatch.setattr(model, "model_validate_json", refuse)
        monkeypatch.setattr(model, "model_validate", refuse)
    assert http.post("/v1/topk", json={"x": [[0.3, 2.0, -1.0]], "k": 1}).status_code == 200
    refused = http.post("/v1/topk", json={"x": [[0.3, "2"]], "k": 1})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "x[0][1]"
    assert http.post("/v1/sort", json={"x": [[0.3, 2.0]], "descending": True}).status_code == 200
