"""Open Inference Protocol (KServe V2 / Triton) routes: server and model metadata, model readiness,
and the documented ``POST /v2/models/<model>/infer`` (answered by the ingress, like ``/v1``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.errors import ErrorBody
from api.oip import (
    BINARY_EXTENSION,
    MODEL_VERSION,
    MODELS,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
)
from service.ingress.asgi import respond
from service.ingress.gate import Ingress
from service.ingress.routes.openapi import request_schema
from service.ingress.routes.v1 import ERROR_RESPONSES, TIMEOUT_PARAMETER
from service.runtime import ServiceRuntime

router = APIRouter(tags=["oip"])


def _unknown_model(model: str) -> JSONResponse:
    reason = f"model {model!r} is not served here (models: {', '.join(MODELS)})"
    body = {"error": reason, "errors": [{"field": "model", "reason": reason}]}
    return JSONResponse(body, status_code=404)


@router.get("/v2", summary="OIP server metadata", response_model=ServerMetadata)
async def server_metadata(request: Request) -> dict[str, Any]:
    app = request.app
    return {"name": app.title, "version": app.version, "extensions": [BINARY_EXTENSION]}


@router.get(
    "/v2/models/{model}",
    summary="OIP model metadata",
    response_model=ModelMetadata,
    responses={404: {"model": ErrorBody, "description": "No such model."}},
)
@router.get(f"/v2/models/{{model}}/versions/{MODEL_VERSION}", include_in_schema=False)
async def model_metadata(request: Request, model: str) -> Any:
    ingress: Ingress = request.app.state.ingress
    codec = ingress.oip_codec(model)
    if codec is None or not codec.operators:
        return _unknown_model(model)
    return codec.metadata()


@router.get(
    "/v2/models/{model}/ready",
    summary="OIP model readiness",
    response_model=ModelReady,
    responses={
        404: {"model": ErrorBody, "description": "No such model."},
        503: {"model": ModelReady, "description": "Not ready (warming or draining)."},
    },
)
@router.get(f"/v2/models/{{model}}/versions/{MODEL_VERSION}/ready", include_in_schema=False)
async def model_ready(request: Request, model: str) -> JSONResponse:
    """200 when warm and not draining, else 503 (with the same body)."""
    ingress: Ingress = request.app.state.ingress
    codec = ingress.oip_codec(model)
    if codec is None or not codec.operators:
        return _unknown_model(model)
    runtime: ServiceRuntime = request.app.state.runtime
    ready = runtime.ready
    return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)


@router.post(
    "/v2/models/{model}/infer",
    summary="OIP inference: the operators of a model on the input x",
    openapi_extra={
        "parameters": [TIMEOUT_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request_schema(InferRequest)}},
        },
    },
    responses={
        200: {
            "model": InferResponse,
            "description": "The output tensors: JSON, or with binary data (binary_data_output, or"
            " an output's binary_data) the JSON header followed by the raw tensors, its length in"
            " the Inference-Header-Content-Length header.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        404: {"model": ErrorBody, "description": "No such model."},
        **ERROR_RESPONSES,
    },
    response_class=Response,
)
@router.post(
    f"/v2/models/{{model}}/versions/{MODEL_VERSION}/infer",
    include_in_schema=False,
    response_class=Response,
)
async def infer(request: Request, model: str) -> Response:
    """The same operators, checks, batching and kernels as ``/v1``, with OIP tensors: see
    :mod:`api.oip` for the inputs, parameters and outputs of each model."""
    ingress: Ingress = request.app.state.ingress
    if ingress.endpoint(request.url.path) is None:
        return _unknown_model(model)
    return await respond(request)
