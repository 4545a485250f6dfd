"""OIP over gRPC, called with Triton's own client (``tritonclient.grpc``) and, for what that client
never sends (typed contents, malformed messages), with the raw stubs it ships: health, metadata
and configuration agree with the HTTP routes, answers equal ``/v1`` bit for bit, and every refusal
is a gRPC status whose message names the field."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service import Settings
from service.app import _start_grpc
from service.ingress import gate
from service.ingress.grpc_gate import PUSHBACK, message_size_limit, server_options
from tests.service.ingress.test_oip import v1_as_tensors
from tests.service.serving import ServerThread, metric, serving

MODELS = ("topk", "sort", "rank", "isotonic")
NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
ROUTE = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.grpc_url) as connected:
        yield connected


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=NUMPY[datatype]))
    return tensor


def test_health_metadata_config_and_index_agree_with_http(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert (metadata.name, metadata.version) == (http.get("/v2").json()["name"], "0.1.0")
    assert "model_configuration" in metadata.extensions
    for model in MODELS:
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")
        expected = json_format.ParseDict(
            http.get(f"/v2/models/{model}").json(), pb.ModelMetadataResponse()
        )
        assert client.get_model_metadata(model) == expected
        http_config = http.get(f"/v2/models/{model}/config").json()
        config = client.get_model_config(model).config
        assert config == json_format.ParseDict(http_config, pb.ModelConfigResponse().config)
        assert config.max_batch_size == 8  # TOPK_MAX_ROWS of the test server
        assert [i.name for i in config.input][0] == "x" and not config.input[0].optional
        assert list(config.input[0].dims) == [-1]
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [
        (m, "1", "READY") for m in MODELS
    ]
    http_index = http.post("/v2/repository/index", json={}).json()
    assert [m["name"] for m in http_index] == list(MODELS)


def test_an_unknown_model_or_version_is_not_found(client: triton.InferenceServerClient) -> None:
    for call in (
        lambda: client.get_model_metadata("median"),
        lambda: client.get_model_config("median"),
        lambda: client.is_model_ready("median"),
        lambda: client.infer("median", [infer_input("x", np.ones((1, 2)), "FP32")]),
    ):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.NOT_FOUND"
        assert "model: 'median'" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("topk", "2")
    assert "model_version" in refused.value.message()


@pytest.mark.parametrize("inline", [True, False], ids=["on-the-loop", "off-the-loop"])
def test_sparse_top_k_with_derivatives_equals_v1_bit_for_bit(
    client: triton.InferenceServerClient,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    inline: bool,
) -> None:
    """Small messages are read and answered on the event loop, large ones on a worker thread
    (as HTTP bodies over 64 KiB): the answer is the same."""
    if not inline:
        monkeypatch.setattr(gate, "INLINE_BYTES", 0)
    rng = np.random.default_rng(1)
    x, tangent, cotangent = (rng.normal(size=(3, 12)).astype(np.float32) for _ in range(3))
    k = np.array([1, 4, 2], np.int32)
    epsilon = np.array([0.5, 1.0, 2.0])
    inputs = [
        infer_input("x", x, "FP32"),
        infer_input("k", k, "INT32"),
        infer_input("epsilon", epsilon, "FP64"),
        infer_input("tangent", tangent, "FP32"),
        infer_input("cotangent", cotangent, "FP32"),
    ]
    result = client.infer(
        "topk", inputs, parameters={"operator": "sparse", "output": "values", "p": 2}
    )
    v1 = {
        "x": x.tolist(), "k": k.tolist(), "epsilon": epsilon.tolist(), "output": "values",
        "p": 2, "tangent": tangent.tolist(), "cotangent": cotangent.tolist(),
    }  # fmt: skip
    expected = v1_as_tensors(http, v1, 12)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["values", "indices", "jvp", "vjp"]
    for name in ("values", "indices", "jvp", "vjp"):
        got = result.as_numpy(name)
        assert got.dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)


@pytest.mark.parametrize(
    ("model", "parameters"),
    [
        ("sort", {"epsilon": 0.5, "regularization": "kl"}),
        ("rank", {"descending": True}),
        ("isotonic", {"increasing": True}),
    ],
)
def test_dense_models_equal_v1_bit_for_bit(
    client: triton.InferenceServerClient, http: httpx.Client, model: str, parameters: dict[str, Any]
) -> None:
    rng = np.random.default_rng(2)
    x, tangent = (rng.normal(size=(2, 7)).astype(np.float32) for _ in range(2))
    result = client.infer(
        model,
        [infer_input("x", x, "FP32"), infer_input("tangent", tangent, "FP32")],
        parameters=parameters,
    )
    answer = http.post(f"/v1/{model}", json={"x": x.tolist(), "tangent": tangent.tolist(), **parameters})  # fmt: skip
    assert answer.status_code == 200, answer.text
    rows = answer.json()["rows"]
    np.testing.assert_array_equal(result.as_numpy("values"), np.array([r["values"] for r in rows], np.float32))  # fmt: skip
    np.testing.assert_array_equal(result.as_numpy("jvp"), np.array([r["jvp"] for r in rows], np.float32))  # fmt: skip
    assert result.as_numpy("vjp") is None and result.as_numpy("indices") is None


def test_chosen_outputs_and_the_request_id(client: triton.InferenceServerClient) -> None:
    x = np.array([[0.5, 3.0, -1.0, 2.0]], np.float32)
    result = client.infer(
        "topk",
        [infer_input("x", x, "FP32")],
        parameters={"k": 2, "operator": "hard"},
        outputs=[triton.InferRequestedOutput("indices")],
        request_id="req-9",
    )
    response = result.get_response()
    assert response.id == "req-9" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["indices"]
    np.testing.assert_array_equal(result.as_numpy("indices"), [[1, 3]])


def test_typed_contents_are_read_too(stub: Any) -> None:
    """tritonclient sends raw contents only; other clients may send typed ones."""
    x = [[0.5, 3.0, -1.0, 2.0], [1.0, 1.5, 0.0, -2.0]]
    request = pb.ModelInferRequest(
        model_name="topk",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="x",
                datatype="FP64",
                shape=[2, 4],
                contents=pb.InferTensorContents(fp64_contents=[v for row in x for v in row]),
            ),
            pb.ModelInferRequest.InferInputTensor(
                name="k",
                datatype="INT64",
                shape=[2],
                contents=pb.InferTensorContents(int64_contents=[1, 2]),
            ),  # fmt: skip
        ],
        parameters={"operator": pb.InferParameter(string_param="hard")},
    )
    response = stub.ModelInfer(request)
    outputs = {o.name: (o, blob) for o, blob in zip(response.outputs, response.raw_output_contents, strict=True)}  # fmt: skip
    described, blob = outputs["indices"]
    assert described.datatype == "INT32" and list(described.shape) == [2, 2]
    np.testing.assert_array_equal(
        np.frombuffer(blob, "<i4").reshape(2, 2), [[1, -1], [0, 1]]
    )  # mask ties: index order
    values = np.frombuffer(outputs["values"][1], "<f4").reshape(2, 4)
    np.testing.assert_array_equal(values, [[0, 1, 0, 0], [1, 1, 0, 0]])


def _tensor(name: str, datatype: str, shape: list[int], **fields: Any) -> Any:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape, **fields)  # fmt: skip


X = _tensor("x", "FP32", [1, 3])
X_RAW = np.array([[1.0, 2.0, 3.0]], np.float32).tobytes()
K1 = {"k": pb.InferParameter(int64_param=1)}


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"inputs": [_tensor("scores", "FP32", [1, 3])], "raw_input_contents": [X_RAW]}, "INVALID_ARGUMENT", "inputs[0].name"),
        ({"inputs": [_tensor("x", "INT8", [1, 3])], "raw_input_contents": [X_RAW]}, "INVALID_ARGUMENT", "inputs[0].datatype"),
        ({"inputs": [_tensor("x", "FP32", [3])], "raw_input_contents": [X_RAW]}, "INVALID_ARGUMENT", "inputs[0].shape"),
        ({"inputs": [_tensor("x", "FP32", [1, 4])], "raw_input_contents": [X_RAW]}, "INVALID_ARGUMENT", "raw_input_contents[0]"),
        ({"inputs": [X], "raw_input_contents": [X_RAW, X_RAW]}, "INVALID_ARGUMENT", "raw_input_contents"),
        ({"inputs": [X, X], "raw_input_contents": [X_RAW, X_RAW]}, "INVALID_ARGUMENT", "inputs[1].name"),
        ({"inputs": [_tensor("x", "FP32", [1, 3], contents=pb.InferTensorContents(fp32_contents=[1.0]))]}, "INVALID_ARGUMENT", "inputs[0].contents.fp32_contents"),
        (
            {
                "inputs": [X, _tensor("k", "INT32", [1], contents=pb.InferTensorContents(int_contents=[1]))],
                "raw_input_contents": [X_RAW, np.int32(1).tobytes()],
                "parameters": {},
            },
            "INVALID_ARGUMENT",
            "inputs[1].contents",
        ),
        ({"inputs": [X], "raw_input_contents": [X_RAW], "parameters": {"k": pb.InferParameter(int64_param=4)}}, "INVALID_ARGUMENT", "k"),
        ({"inputs": [X], "raw_input_contents": [X_RAW], "parameters": {}}, "INVALID_ARGUMENT", "k"),
        ({"inputs": [X], "raw_input_contents": [X_RAW], "parameters": {"k": pb.InferParameter(string_param="1")}}, "INVALID_ARGUMENT", "k"),
        ({"inputs": [X], "raw_input_contents": [X_RAW], "parameters": {**K1, "topk": pb.InferParameter(int64_param=1)}}, "INVALID_ARGUMENT", "parameters"),
        ({"inputs": [X], "raw_input_contents": [X_RAW], "parameters": {**K1, "operator": pb.InferParameter(string_param="median")}}, "INVALID_ARGUMENT", "operator"),
        ({"inputs": [X], "raw_input_contents": [X_RAW], "parameters": {**K1, "operator": pb.InferParameter(string_param="hard"), "epsilon": pb.InferParameter(double_param=0.5)}}, "INVALID_ARGUMENT", "epsilon"),
        ({"inputs": [X], "raw_input_contents": [np.array([[1.0, np.nan, 3.0]], np.float32).tobytes()], "parameters": K1}, "INVALID_ARGUMENT", "x[0][1]"),
        ({"inputs": [_tensor("x", "FP32", [9, 1])], "raw_input_contents": [np.ones(9, np.float32).tobytes()], "parameters": K1}, "INVALID_ARGUMENT", "x"),
        ({"inputs": [X], "raw_input_contents": [X_RAW], "parameters": K1, "outputs": [pb.ModelInferRequest.InferRequestedOutputTensor(name="jvp")]}, "INVALID_ARGUMENT", "outputs[0].name"),
        ({"inputs": [], "parameters": K1}, "INVALID_ARGUMENT", "inputs"),
        ({"inputs": [X], "raw_input_contents": [X_RAW], "parameters": K1, "model_version": "2"}, "NOT_FOUND", "model_version"),
    ],
)  # fmt: skip
def test_a_bad_request_gets_a_status_naming_its_field(
    stub: Any, fields: dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(pb.ModelInferRequest(model_name="topk", **fields))
    assert refused.value.code() == getattr(grpc.StatusCode, code)
    assert refused.value.details().startswith(f"{field}: ") or f"; {field}: " in refused.value.details(), refused.value.details()  # fmt: skip


def test_tritonclient_shows_the_servers_reason(client: triton.InferenceServerClient) -> None:
    x = infer_input("x", np.ones((1, 3)), "FP32")
    with pytest.raises(InferenceServerException) as refused:
        client.infer("topk", [x], parameters={"k": 5})
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert refused.value.message().startswith("k: k=5 exceeds the length 3 of row x[0]")


def test_grpc_answers_are_counted_under_their_route(
    server: ServerThread, client: triton.InferenceServerClient
) -> None:
    ok = f'topk_requests_total{{operator="hard",route="{ROUTE}",status="200"}}'
    refused = f'topk_requests_total{{operator="unknown",route="{ROUTE}",status="422"}}'  # refused before queued
    before = metric(server, ok), metric(server, refused)
    x = infer_input("x", np.ones((1, 3)), "FP32")
    client.infer("topk", [x], parameters={"k": 1, "operator": "hard"})
    with pytest.raises(InferenceServerException):
        client.infer("topk", [x], parameters={"k": 4})
    assert (metric(server, ok), metric(server, refused)) == (before[0] + 1, before[1] + 1)


def test_limits_draining_and_stop() -> None:
    """Messages beyond the limit are refused by gRPC itself; a draining server still answers; a
    stopped one answers UNAVAILABLE with gRPC's retry pushback; the lifespan stops the gRPC server
    and frees its port."""
    settings = {"max_body_bytes": 1024, "warmup_row_buckets": (1,), "warmup_n_buckets": (16,)}
    with serving(grpc_port=0, **settings) as server:
        limit = message_size_limit(server.runtime.settings)
        assert limit == 16 * 8 * 64 + 65536  # the largest answer of the test server's limits
        address = server.grpc_url
        with grpc.insecure_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            huge = pb.ModelInferRequest(model_name="topk", inputs=[X], raw_input_contents=[bytes(limit)])  # fmt: skip
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(huge)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            server.runtime.begin_drain()
            assert not stub.ServerReady(pb.ServerReadyRequest()).ready
            request = pb.ModelInferRequest(model_name="topk", inputs=[X], raw_input_contents=[X_RAW], parameters=K1)  # fmt: skip
            # Draining (TOPK_DRAIN_DELAY_S): not ready, but every request is still served, as HTTP.
            assert stub.ModelInfer(request).raw_output_contents
            server.runtime.state = "stopped"  # what the lifespan's stop leaves: nothing is taken
            with pytest.raises(grpc.RpcError) as unavailable:
                stub.ModelInfer(request)
            assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
            assert unavailable.value.details().startswith("request: the server is shutting down")
            assert dict(unavailable.value.trailing_metadata())[PUSHBACK] == "1000"
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as gone:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


def test_without_the_grpc_extra_a_default_port_warns_and_an_explicit_one_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "service.ingress.grpc_gate", None)  # import fails

    def app(settings: Settings) -> Any:
        runtime = SimpleNamespace(settings=settings)
        return SimpleNamespace(state=SimpleNamespace(runtime=runtime), title="t", version="0")

    with caplog.at_level(logging.WARNING, logger="service.app"):
        assert asyncio.run(_start_grpc(app(Settings.from_env({})))) is None
    assert "gRPC is off" in caplog.text
    with pytest.raises(RuntimeError, match="TOPK_GRPC_PORT is set"):
        asyncio.run(_start_grpc(app(Settings.from_env({"TOPK_GRPC_PORT": "8001"}))))
    assert Settings.from_env({"TOPK_GRPC_PORT": ""}).grpc_port is None


def test_the_default_settings_make_a_grpc_server() -> None:
    """`make run` (default settings) failed at start-up: the message limit was 16 x max_rows x
    max_n = 2^36 bytes, which grpc's C int option cannot hold (OverflowError)."""
    settings = Settings.from_env({})
    limit = message_size_limit(settings)
    assert settings.max_body_bytes <= limit < 2**31
    assert limit >= 16 * settings.max_entries  # four float32 outputs of the largest request

    async def build() -> None:
        server = grpc.aio.server(options=server_options(settings))
        await server.stop(None)

    asyncio.run(build())
