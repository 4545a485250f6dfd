"""Open Inference Protocol (KServe V2 / Triton) routes: server and model metadata, model readiness,
Triton's model configuration and repository index, and the documented
``POST /v2/models/<model>/infer`` (answered by the ingress, like ``/v1``). The gRPC gate answers the
same from the same :class:`~service.ingress.oip_model.OipModel`."""

from __future__ import annotations

from typing import Any

import orjson
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
    RepositoryModel,
    ServerMetadata,
)
from service.ingress.asgi import respond
from service.ingress.gate import Ingress
from service.ingress.oip_model import invalid
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
    extensions = [BINARY_EXTENSION, "model_configuration"]
    return {"name": app.title, "version": app.version, "extensions": extensions}


@router.get(
    "/v2/models/{model}",
    summary="OIP model metadata",
    response_model=ModelMetadata,
    responses={404: {"model": ErrorBody, "description": "No such model."}},
)
@router.get(f"/v2/models/{{model}}/versions/{MODEL_VERSION}", include_in_schema=False)
async def model_metadata(request: Request, model: str) -> Any:
    ingress: Ingress = request.app.state.ingress
    served = ingress.oip_model(model)
    return _unknown_model(model) if served is None else served.metadata()


@router.get(
    "/v2/models/{model}/config",
    summary="Triton model configuration (max_batch_size, inputs, outputs)",
    responses={404: {"description": "No such model."}},
)
@router.get(f"/v2/models/{{model}}/versions/{MODEL_VERSION}/config", include_in_schema=False)
async def model_config(request: Request, model: str) -> Any:
    """Triton's tools (perf_analyzer, model analyzer) read this before they send anything. The
    first dimension of every tensor is the batch (rows, at most ``max_batch_size``), left out of
    ``dims``."""
    ingress: Ingress = request.app.state.ingress
    served = ingress.oip_model(model)
    return _unknown_model(model) if served is None else served.config()


@router.post(
    "/v2/repository/index",
    summary="Triton repository index: the models and their state",
    response_model=list[RepositoryModel],
)
async def repository_index(request: Request) -> list[dict[str, str]]:
    """Every model this build serves, ``READY`` once warm (``{"ready": true}`` in the body lists
    only ready models)."""
    ingress: Ingress = request.app.state.ingress
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as error:
        raise invalid("body", f"Invalid JSON: {error}") from None
    if type(body) is not dict or not body.keys() <= {"ready"}:
        raise invalid("body", 'expected {} or {"ready": true|false}')
    ready = body.get("ready", False)
    if type(ready) is not bool:
        raise invalid("ready", f"expected true or false, got {ready!r}")
    return ingress.repository_index(ready_only=ready)


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
    if ingress.oip_model(model) is None:
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
