"""The HTTP OIP routes called with Triton's own HTTP client (``tritonclient.http``, sync and
asyncio, binary tensors on and off): health, metadata, configuration, repository index, answers
equal to ``/v1`` bit for bit, and the server's reason in the client's error message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.service.ingress.test_oip import v1_as_tensors
from tests.service.serving import ServerThread

NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32}


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    connected = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield connected
    connected.close()


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(np.ascontiguousarray(array, NUMPY[datatype]), binary_data=binary)
    return tensor


def test_health_metadata_config_and_index(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for model in ("topk", "sort", "rank", "isotonic"):
        assert client.is_model_ready(model)
        assert client.get_model_metadata(model) == http.get(f"/v2/models/{model}").json()
        config = client.get_model_config(model)
        assert config["name"] == model and config["max_batch_size"] == 8
        assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [-1], "optional": False}  # fmt: skip
    index = client.get_model_repository_index()
    assert {m["name"]: m["state"] for m in index} == dict.fromkeys(
        ("topk", "sort", "rank", "isotonic"), "READY"
    )


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_sparse_top_k_with_derivatives_equals_v1(
    client: triton.InferenceServerClient, http: httpx.Client, binary: bool
) -> None:
    rng = np.random.default_rng(3)
    x, tangent, cotangent = (rng.normal(size=(3, 10)).astype(np.float32) for _ in range(3))
    k = np.array([2, 1, 3], np.int32)
    inputs = [
        infer_input("x", x, "FP32", binary),
        infer_input("k", k, "INT32", binary),
        infer_input("tangent", tangent, "FP32", binary),
        infer_input("cotangent", cotangent, "FP32", binary),
    ]
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("values", "indices", "jvp", "vjp")
    ]
    result = client.infer(
        "topk", inputs, outputs=outputs, parameters={"output": "values", "epsilon": 0.5}
    )
    body = {"x": x.tolist(), "k": k.tolist(), "output": "values", "epsilon": 0.5,
            "tangent": tangent.tolist(), "cotangent": cotangent.tolist()}  # fmt: skip
    expected = v1_as_tensors(http, body, 10)
    for name in ("values", "indices", "jvp", "vjp"):
        got = result.as_numpy(name)
        assert got is not None and got.dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)


def test_the_asyncio_client_and_a_dense_model(server: ServerThread, http: httpx.Client) -> None:
    x = np.array([[3.0, 1.0, 2.0], [0.0, -1.0, 5.0]], np.float32)

    async def call() -> Any:
        client = triton_aio.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            assert await client.is_server_ready()
            inputs = [infer_input("x", x, "FP32", True)]
            return await client.infer("isotonic", inputs, parameters={"increasing": True})
        finally:
            await client.close()

    result = asyncio.run(call())
    answer = http.post("/v1/isotonic", json={"x": x.tolist(), "increasing": True}).json()
    expected = np.array([row["values"] for row in answer["rows"]], np.float32)
    np.testing.assert_array_equal(result.as_numpy("values"), expected)


def test_the_client_shows_the_servers_reason(client: triton.InferenceServerClient) -> None:
    x = infer_input("x", np.ones((1, 3)), "FP32", True)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("topk", [x], parameters={"k": 5})
    assert refused.value.status() == "422"
    assert refused.value.message().startswith("k: k=5 exceeds the length 3 of row x[0]")
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("median")
    assert unknown.value.status() == "404" and "model 'median'" in unknown.value.message()
    with pytest.raises(InferenceServerException) as wrong_type:
        client.infer("topk", [infer_input("k", np.ones(1), "FP64", True)], parameters={"k": 1})
    assert wrong_type.value.message().startswith("inputs[0].datatype: k takes INT32 or INT64")
