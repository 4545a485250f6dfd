"""The ``/v1`` routes as OpenAPI documents them, and ``GET /v1/operators``.

The inference routes are answered by the ingress (:mod:`service.ingress.asgi` serves them before
FastAPI routes anything); they are declared here with the request schema of :mod:`api.models` so
that the OpenAPI document describes the contract, and their endpoint is the same ingress.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.errors import ErrorBody
from api.models import (
    DenseResponse,
    IsotonicRequest,
    OperatorInfo,
    OperatorsResponse,
    ParameterInfo,
    SoftSortRequest,
    TopKRequest,
    TopKResponse,
)
from api.registry import OPERATORS
from core import domain_limits
from service.ingress.asgi import respond
from service.ingress.headers import TIMEOUT_HEADER
from service.ingress.routes.openapi import request_schema
from service.runtime import ServiceRuntime

router = APIRouter(tags=["topk"])

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Content-Length is not a byte count."),
        (413, "Body, rows or row length beyond the limits of GET /v1/operators."),
        (415, "Content-Type is not JSON, or the body is compressed (Content-Encoding)."),
        (422, "A field is invalid; the body names it and says why."),
        (503, "Queue full, warming or draining; retry after the Retry-After header."),
        (504, "Still queued when the request's timeout (X-Request-Timeout-Ms) ran out."),
    )
}
TIMEOUT_PARAMETER = {
    "name": TIMEOUT_HEADER,
    "in": "header",
    "required": False,
    "description": "Drop the request with 504 if it is still queued after this many milliseconds"
    " (at most the server's TOPK_REQUEST_TIMEOUT_MS).",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}
REQUEST_MODELS: dict[str, type[Any]] = {
    "/topk": TopKRequest,
    "/v1/topk": TopKRequest,
    "/v1/sort": SoftSortRequest,
    "/v1/rank": SoftSortRequest,
    "/v1/isotonic": IsotonicRequest,
}
SUMMARIES = {
    "/topk": "Top-k of each row (the current version's name of /v1/topk)",
    "/v1/topk": "Top-k of each row, with optional JVP/VJP",
    "/v1/sort": "Soft sort",
    "/v1/rank": "Soft rank",
    "/v1/isotonic": "Isotonic regression",
}


def _document(route: str, description: str) -> None:
    model = REQUEST_MODELS[route]
    answer = TopKResponse if route in ("/topk", "/v1/topk") else DenseResponse
    router.add_api_route(
        route,
        respond,
        methods=["POST"],
        name="current_topk" if route == "/topk" else route.rsplit("/", 1)[-1],
        summary=SUMMARIES[route],
        description=description,
        openapi_extra={
            "parameters": [TIMEOUT_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema(model)}},
            },
        },
        responses={200: {"model": answer}, **ERROR_RESPONSES},
        response_class=Response,
    )


_document(
    "/v1/topk",
    "Sparse, soft or hard top-k of each row of ``x``; the answer lists each row's support. The body "
    "is checked in full before the request is queued, so a bad request is refused alone (4xx naming "
    "the field) and never affects the requests batched with it.",
)
_document(
    "/topk",
    "``POST /v1/topk`` under the name of the current version: the same endpoint (same reader, checks,"
    ' batching and metrics labels, ``route="/v1/topk"``). ``/v1/topk`` is the stable name: it keeps'
    " its contract when a later version changes ``/topk``.",
)
for _operator in OPERATORS:
    if _operator.family == "dense":
        _document(
            _operator.route,
            f"{_operator.description} One value per entry, with optional JVP (``tangent``) and VJP"
            " (``cotangent``). 404 if this build's core lacks it.",
        )


def operators_response(runtime: ServiceRuntime) -> OperatorsResponse:
    """What this server computes, from the registry bound to this server's core and settings."""
    infos = []
    for bound in runtime.operators.values():
        spec = bound.spec
        parameters = [
            ParameterInfo(
                name=p.name,
                type=p.type_name,
                default=None if p.required else p.default,
                allowed=None if p.choices is None else list(p.choices),
                description=p.description,
            )
            for p in spec.parameters
        ]
        infos.append(
            OperatorInfo(
                name=spec.name,
                route=spec.route,
                outputs=list(bound.functions),
                parameters=parameters,
                description=spec.description,
                domain=list(domain_limits().get(spec.name, ())),
            )
        )
    return OperatorsResponse(operators=infos, limits=runtime.settings.limits)


@router.get("/v1/operators", response_model=OperatorsResponse, summary="Operators and limits")
async def operators(request: Request) -> OperatorsResponse:
    """Operators, their outputs, parameters, defaults, and the size limits of this server."""
    runtime: ServiceRuntime = request.app.state.runtime
    return operators_response(runtime)
