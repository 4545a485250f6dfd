"""The Open Inference Protocol endpoints: metadata, readiness, and inference as JSON or with the
binary tensor data extension, checked against ``/v1/topk`` and NumPy; every 4xx names its field."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.serving import ServerThread

INFER = "/v2/models/topk/infer"
DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = False) -> dict[str, Any]:
    described: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
    if binary:
        described["parameters"] = {"binary_data_size": array.astype(DTYPES[datatype]).nbytes}
    else:
        described["data"] = array.ravel().tolist()
    return described


def binary_body(
    request: dict[str, Any], arrays: list[tuple[np.ndarray, str]]
) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(request).encode()
    blob = b"".join(array.astype(DTYPES[datatype]).tobytes() for array, datatype in arrays)
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + blob, headers


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    """Output tensors by name, JSON or binary."""
    assert response.status_code == 200, response.text
    content = response.content
    length = response.headers.get("inference-header-content-length")
    header = json.loads(content[: int(length)] if length else content)
    blob, offset = content[int(length) :] if length else b"", 0
    tensors = {}
    for output in header["outputs"]:
        dtype = np.dtype(DTYPES[output["datatype"]])
        if "data" in output:
            values = np.array(output["data"], dtype=dtype)
        else:
            size = output["parameters"]["binary_data_size"]
            values = np.frombuffer(blob, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        tensors[output["name"]] = values.reshape(output["shape"])
    assert offset == len(blob)
    return tensors


def v1_as_tensors(http: httpx.Client, body: dict[str, Any], n: int) -> dict[str, np.ndarray]:
    """The /v1/topk answer of the same request, laid out densely by the test itself."""
    answer = http.post("/v1/topk", json=body)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["rows"]
    values = np.zeros((len(rows), n), np.float32)
    jvp, vjp = np.zeros_like(values), np.zeros_like(values)
    width = max(len(row["indices"]) for row in rows)
    indices = np.full((len(rows), width), -1, np.int32)
    for i, row in enumerate(rows):
        support = row["indices"]
        indices[i, : len(support)] = support
        values[i, support] = row["values"]
        if "jvp" in row:
            jvp[i, support] = row["jvp"]
        if "vjp" in row:
            vjp[i] = row["vjp"]
    return {"values": values, "indices": indices, "jvp": jvp, "vjp": vjp}


def test_server_and_model_metadata_and_readiness(http: httpx.Client) -> None:
    server = http.get("/v2").json()
    assert "binary_tensor_data" in server["extensions"] and server["name"] == "topk-service"
    model = http.get("/v2/models/topk").json()
    assert model["name"] == "topk" and model["versions"] == ["1"]
    assert {t["name"] for t in model["inputs"]} == {"x", "k", "epsilon", "tangent", "cotangent"}
    assert {t["name"] for t in model["outputs"]} == {"values", "indices", "jvp", "vjp"}
    assert http.get("/v2/models/topk/versions/1").json() == model
    ready = http.get("/v2/models/topk/ready")
    assert ready.status_code == 200 and ready.json() == {"name": "topk", "ready": True}


def test_hard_top_k_indices_equal_numpy(http: httpx.Client) -> None:
    x = np.random.default_rng(0).normal(size=(4, 20)).astype(np.float32)
    request = {
        "id": "req-7",
        "parameters": {"k": 3, "operator": "hard"},
        "inputs": [tensor("x", x, "FP32")],
    }
    response = http.post(INFER, json=request)
    assert response.json()["id"] == "req-7" and response.json()["model_name"] == "topk"
    out = outputs_of(response)
    expected = np.sort(np.argsort(x, axis=1)[:, -3:], axis=1)  # mask outputs tie: index order
    np.testing.assert_array_equal(out["indices"], expected)
    mask = np.zeros_like(x)
    np.put_along_axis(mask, expected, 1.0, axis=1)
    np.testing.assert_array_equal(out["values"], mask)
    assert set(out) == {"values", "indices"}  # no derivatives were asked for


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_sparse_with_derivatives_equals_v1(http: httpx.Client, binary: bool) -> None:
    rng = np.random.default_rng(1)
    x, tangent, cotangent = (rng.normal(size=(3, 12)).astype(np.float32) for _ in range(3))
    k = np.array([1, 4, 2], np.int32)
    epsilon = np.array([0.5, 1.0, 2.0])
    inputs = [(x, "FP32", "x"), (k, "INT32", "k"), (epsilon, "FP64", "epsilon"),
              (tangent, "FP32", "tangent"), (cotangent, "FP32", "cotangent")]  # fmt: skip
    request: dict[str, Any] = {
        "parameters": {"operator": "sparse", "output": "values", "p": 2},
        "inputs": [tensor(name, array, datatype, binary) for array, datatype, name in inputs],
    }
    if binary:
        request["parameters"]["binary_data_output"] = True
        content, headers = binary_body(request, [(a, d) for a, d, _ in inputs])
        response = http.post(INFER, content=content, headers=headers)
        assert response.headers["content-type"] == "application/octet-stream"
    else:
        response = http.post(INFER, json=request)
        assert response.headers["content-type"] == "application/json"
    out = outputs_of(response)
    v1 = {
        "x": x.tolist(), "k": k.tolist(), "epsilon": epsilon.tolist(), "output": "values",
        "p": 2, "tangent": tangent.tolist(), "cotangent": cotangent.tolist(),
    }  # fmt: skip
    expected = v1_as_tensors(http, v1, 12)
    assert set(out) == {"values", "indices", "jvp", "vjp"}
    for name, array in out.items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)


def test_chosen_outputs_nested_data_and_fp64(http: httpx.Client) -> None:
    x = np.array([[0.5, 3.0, -1.0, 2.0], [1.0, 1.5, 0.0, -2.0]])
    request = {
        "parameters": {"k": 2},
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": x.tolist()}],
        "outputs": [{"name": "indices", "parameters": {"binary_data": True}}, {"name": "values"}],
    }
    response = http.post(INFER, json=request)
    header = json.loads(
        response.content[: int(response.headers["inference-header-content-length"])]
    )
    assert [o["name"] for o in header["outputs"]] == ["indices", "values"]
    out = outputs_of(response)
    expected = v1_as_tensors(http, {"x": x.tolist(), "k": 2}, 4)
    np.testing.assert_array_equal(out["indices"], expected["indices"])
    np.testing.assert_array_equal(out["values"], expected["values"])


X = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}


@pytest.mark.parametrize(
    ("request_body", "status", "field"),
    [
        ({"parameters": {"k": 1}, "inputs": [{**X, "name": "scores"}]}, 422, "inputs[0].name"),
        (
            {"parameters": {"k": 1}, "inputs": [{**X, "datatype": "INT8"}]},
            422,
            "inputs[0].datatype",
        ),
        ({"parameters": {"k": 1}, "inputs": [{**X, "shape": [3]}]}, 422, "inputs[0].shape"),
        ({"parameters": {"k": 1}, "inputs": [{**X, "shape": [1, 4]}]}, 422, "inputs[0].data"),
        (
            {"parameters": {"k": 1}, "inputs": [{**X, "data": [1.0, "2", 3.0]}]},
            422,
            "inputs[0].data",
        ),
        (
            {"parameters": {"k": 1}, "inputs": [{**X, "data": [1.0, True, 3.0]}]},
            422,
            "inputs[0].data",
        ),
        ({"parameters": {"k": 1}, "inputs": [{**X, "data": [1.0, 1e39, 3.0]}]}, 422, "x[0][1]"),
        ({"parameters": {"k": 1}, "inputs": [X, X]}, 422, "inputs[1].name"),
        ({"parameters": {"k": 4}, "inputs": [X]}, 422, "k"),
        ({"parameters": {"k": 0}, "inputs": [X]}, 422, "k"),
        ({"parameters": {"k": "1"}, "inputs": [X]}, 422, "k"),
        ({"inputs": [X]}, 422, "k"),
        ({"parameters": {"k": 1, "topk": 2}, "inputs": [X]}, 422, "parameters"),
        ({"parameters": {"k": 1, "operator": "median"}, "inputs": [X]}, 422, "operator"),
        (
            {"parameters": {"k": 1, "operator": "hard", "epsilon": 0.5}, "inputs": [X]},
            422,
            "epsilon",
        ),
        ({"parameters": {"k": 1}, "inputs": []}, 422, "inputs"),
        ({"parameters": {"k": 1}, "inputs": [{**X, "name": "tangent"}]}, 422, "inputs"),
        (
            {
                "parameters": {"k": 1},
                "inputs": [X, {**X, "name": "tangent", "shape": [1, 2], "data": [1.0, 2.0]}],
            },
            422,
            "tangent",
        ),  # fmt: skip
        (
            {"parameters": {"k": 1}, "inputs": [X], "outputs": [{"name": "jvp"}]},
            422,
            "outputs[0].name",
        ),
        (
            {"parameters": {"k": 1}, "inputs": [{**X, "shape": [1, 65], "data": [0.5] * 65}]},
            413,
            "x",
        ),
        ({"parameters": {"k": 1}, "inputs": [X], "extra": 1}, 422, "extra"),
        (
            {"parameters": {"k": 1}, "inputs": [{**X, "data": [1.0, 10**400, 3.0]}]},
            422,
            "inputs[0].data",
        ),
        (
            {"parameters": {"k": 1}, "inputs": [{**X, "data": [[1.0, 2.0], 3.0]}]},
            422,
            "inputs[0].data",
        ),
        (
            {"parameters": {"k": 1}, "inputs": [{**X, "data": [[], [1.0, 2.0, 3.0]]}]},
            422,
            "inputs[0].data",
        ),
        (
            {"parameters": {"k": 1}, "inputs": [{**X, "data": [[1.0], [2.0], [3.0]]}]},
            422,
            "inputs[0].data",
        ),
        (
            {"inputs": [X, {"name": "k", "shape": [1], "datatype": "INT32", "data": [2**40]}]},
            422,
            "inputs[1].data",
        ),
        ({"inputs": [X, {"name": "k", "shape": [1], "datatype": "INT32", "data": [0]}]}, 422, "k"),
        (
            {"inputs": [X, {"name": "k", "shape": [1], "datatype": "INT32", "data": [1.5]}]},
            422,
            "inputs[1].data",
        ),
        ({"parameters": {"k": 1, "epsilon": 1e39}, "inputs": [X]}, 422, "epsilon"),
        ({"parameters": {"k": 1}, "inputs": [X], "outputs": []}, 422, "outputs"),
        (
            {
                "parameters": {"k": 1},
                "inputs": [X],
                "outputs": [{"name": "values"}, {"name": "values"}],
            },
            422,
            "outputs[1].name",
        ),  # fmt: skip
    ],
)
def test_a_bad_inference_request_gets_a_4xx_naming_its_field(
    http: httpx.Client, request_body: dict[str, Any], status: int, field: str
) -> None:
    response = http.post(INFER, json=request_body)
    assert response.status_code == status, response.text
    body = response.json()
    assert field in [error["field"] for error in body["errors"]], body
    assert field in body["error"]


def test_bad_binary_framing_and_content_type_are_refused(http: httpx.Client) -> None:
    x = np.array([[1.0, np.nan, 3.0]], np.float32)
    request = {"parameters": {"k": 1}, "inputs": [tensor("x", x, "FP32", binary=True)]}
    content, headers = binary_body(request, [(x, "FP32")])
    nan = http.post(INFER, content=content, headers=headers)
    assert nan.status_code == 422 and nan.json()["errors"][0]["field"] == "x[0][1]"
    short = http.post(INFER, content=content[:-4], headers=headers)
    assert short.status_code == 422
    assert short.json()["errors"][0]["field"] == "inputs[0].parameters.binary_data_size"
    extra = http.post(INFER, content=content + b"\0\0\0\0", headers=headers)
    assert extra.status_code == 422 and extra.json()["errors"][0]["field"] == "body"
    lying = http.post(
        INFER, content=content, headers={**headers, "inference-header-content-length": "x"}
    )
    assert lying.status_code == 422
    assert lying.json()["errors"][0]["field"] == "Inference-Header-Content-Length"
    gzip = http.post(INFER, content=content, headers={**headers, "content-encoding": "gzip"})
    assert gzip.status_code == 415 and gzip.json()["errors"][0]["field"] == "content-encoding"


def test_a_request_without_content_type_is_read_as_triton_clients_send_it(
    server: ServerThread,
) -> None:
    """tritonclient.http sends no Content-Type: the framing header alone tells binary from JSON."""
    x = np.array([[1.0, 5.0, 3.0]], np.float32)
    request = {"parameters": {"k": 1, "operator": "hard"}, "inputs": [tensor("x", x, "FP32", True)]}
    content, headers = binary_body(request, [(x, "FP32")])
    del headers["content-type"]
    as_json = json.dumps({**request, "inputs": [tensor("x", x, "FP32")]}).encode()
    with httpx.Client() as client:
        for body, extra in ((content, headers), (as_json, {})):
            raw = client.build_request("POST", server.url + INFER, content=body, headers=extra)
            assert "content-type" not in raw.headers
            np.testing.assert_array_equal(outputs_of(client.send(raw))["indices"], [[1]])


def test_inference_counts_in_the_metrics(server: ServerThread, http: httpx.Client) -> None:
    from tests.service.serving import metric

    sample = 'topk_requests_total{operator="sparse",route="/v2/models/topk/infer",status="200"}'
    before = metric(server, sample)
    assert http.post(INFER, json={"parameters": {"k": 1}, "inputs": [X]}).status_code == 200
    assert metric(server, sample) == before + 1


def test_repository_index_and_model_config(http: httpx.Client) -> None:
    ready = http.post("/v2/repository/index", json={"ready": True})
    assert [m["name"] for m in ready.json()] == ["topk", "sort", "rank", "isotonic"]
    assert http.post("/v2/repository/index").json() == ready.json()
    for body, field in (({"ready": "yes"}, "ready"), ([1], "body"), ({"repository": "x"}, "body")):
        refused = http.post("/v2/repository/index", json=body)
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == field
    config = http.get("/v2/models/sort/config").json()
    assert config["max_batch_size"] == 8 and [i["name"] for i in config["input"]] == [
        "x", "epsilon", "tangent", "cotangent"
    ]  # fmt: skip
    assert http.get("/v2/models/sort/versions/1/config").json() == config
    unknown = http.get("/v2/models/median/config")
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "model"
