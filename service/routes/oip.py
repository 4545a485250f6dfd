"""Open Inference Protocol (KServe V2 / Triton) endpoints: server and model metadata, model
readiness, and ``POST /v2/models/topk/infer`` with the binary tensor data extension."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.oip import (
    BINARY_EXTENSION,
    HEADER_LENGTH,
    MODEL_NAME,
    MODEL_VERSION,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
)
from service.body import read_capped_body
from service.fast_path import INLINE_PARSE_BYTES
from service.oip import OipRequest, decode, encode, invalid, split_body, tensor_metadata
from service.routes.topk import ERROR_RESPONSES, counted, runtime_of
from service.submission import TIMEOUT_HEADER, answer, request_timeout

router = APIRouter(tags=["oip"])
INFER_ROUTE = f"/v2/models/{MODEL_NAME}/infer"


@router.get("/v2", summary="OIP server metadata", response_model=ServerMetadata)
async def server_metadata(request: Request) -> dict[str, Any]:
    app = request.app
    return {"name": app.title, "version": app.version, "extensions": [BINARY_EXTENSION]}


@router.get(f"/v2/models/{MODEL_NAME}", summary="OIP model metadata", response_model=ModelMetadata)
@router.get(f"/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}", include_in_schema=False)
async def model_metadata() -> dict[str, Any]:
    inputs, outputs = tensor_metadata()
    return {
        "name": MODEL_NAME,
        "versions": [MODEL_VERSION],
        "platform": "jax",
        "inputs": inputs,
        "outputs": outputs,
    }


@router.get(
    f"/v2/models/{MODEL_NAME}/ready", summary="OIP model readiness", response_model=ModelReady
)
@router.get(f"/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/ready", include_in_schema=False)
async def model_ready(request: Request) -> JSONResponse:
    """200 when warm and not draining, else 503 (with the same body)."""
    ready = runtime_of(request).ready
    return JSONResponse({"name": MODEL_NAME, "ready": ready}, status_code=200 if ready else 503)


def _check_encoding(request: Request) -> None:
    """Any content type is read (Triton's own HTTP client sends none; the framing is told by
    ``Inference-Header-Content-Length``), but a compressed body is refused rather than misread."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise invalid(
            "content-encoding", f"{encoding!r} is not supported; send it uncompressed", 415
        )


async def _infer(request: Request) -> tuple[bytes, dict[str, str], str]:
    runtime = runtime_of(request)
    _check_encoding(request)
    timeout = request_timeout(
        request.headers.get(TIMEOUT_HEADER), runtime.settings.request_timeout_ms
    )
    body = await read_capped_body(request, runtime.settings.max_body_bytes)
    header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
    engine = runtime.engine
    decoded: OipRequest
    if len(body) <= INLINE_PARSE_BYTES:
        decoded = decode(engine, header, binary)
    else:  # a big body is decoded off the event loop
        decoded = await asyncio.get_running_loop().run_in_executor(
            None, decode, engine, header, binary
        )
    payload = await answer(runtime, decoded.prepared, timeout, request.receive)
    if len(body) <= INLINE_PARSE_BYTES:
        content, headers = encode(decoded, payload)
    else:  # dense outputs of a big request are built off the event loop too
        content, headers = await asyncio.get_running_loop().run_in_executor(
            None, encode, decoded, payload
        )
    return content, headers, decoded.prepared.key.operator


@router.post(
    INFER_ROUTE,
    summary="OIP inference: top-k of each row of the input x",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": InferRequest.model_json_schema()}},
        },
    },
    responses={200: {"model": InferResponse}, **ERROR_RESPONSES},
    response_class=Response,
)
@router.post(
    f"/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer",
    include_in_schema=False,
    response_class=Response,
)
async def infer(request: Request) -> Response:
    """The same operators, checks, batching and kernels as ``POST /v1/topk``, with OIP tensors:
    see :mod:`api.oip` for the inputs, parameters and outputs."""

    async def respond() -> tuple[Response, str]:
        content, headers, operator = await _infer(request)
        return Response(content, headers=headers), operator

    return await counted(request, INFER_ROUTE, respond)
