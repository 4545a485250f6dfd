"""``POST /v1/topk``, the dense operators (``/v1/sort``, ``/v1/rank``, ``/v1/isotonic``) and
``GET /v1/operators``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from api.errors import ErrorBody
from api.models import (
    DenseRequest,
    DenseResponse,
    IsotonicRequest,
    OperatorInfo,
    OperatorsResponse,
    ParameterInfo,
    SoftSortRequest,
    TopKRequest,
    TopKResponse,
)
from service.body import check_json_content_type, read_capped_body
from service.errors import ApiError, field_errors
from service.fast_path import INLINE_PARSE_BYTES
from service.prepared import PreparedRequest, prepare_dense_request, prepare_request
from service.runtime import ServiceRuntime
from service.submission import TIMEOUT_HEADER, ClientGone, answer, count, request_timeout

router = APIRouter(tags=["topk"])


_REQUEST_SCHEMA = TopKRequest.model_json_schema()
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (413, "Body, rows or row length beyond the limits of GET /v1/operators."),
        (415, "Content-Type is not application/json."),
        (422, "A field is invalid; the body names it and says why."),
        (503, "Queue full, warming or draining; retry after the Retry-After header."),
        (504, "Still queued when the request's timeout (X-Request-Timeout-Ms) ran out."),
    )
}
_TIMEOUT_PARAMETER = {
    "name": "X-Request-Timeout-Ms",
    "in": "header",
    "required": False,
    "description": "Drop the request with 504 if it is still queued after this many milliseconds"
    " (at most the server's TOPK_REQUEST_TIMEOUT_MS).",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}


def runtime_of(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


def _parse(body: bytes, model: type[Any]) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise ApiError(422, "invalid request", field_errors(error)) from None


async def _answer(
    request: Request,
    runtime: ServiceRuntime,
    model: type[Any],
    prepare: Callable[[Any], PreparedRequest],
) -> tuple[bytes, str]:
    """Read, parse and check the body, queue it, and wait for its own answer (and operator)."""
    check_json_content_type(request)
    timeout = request_timeout(
        request.headers.get(TIMEOUT_HEADER), runtime.settings.request_timeout_ms
    )
    body = await read_capped_body(request, runtime.settings.max_body_bytes)
    if len(body) <= INLINE_PARSE_BYTES:
        prepared = prepare(_parse(body, model))
    else:
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(None, _parse, body, model)
        prepared = await loop.run_in_executor(None, prepare, parsed)
    payload = await answer(runtime, prepared, timeout, request.receive)
    return payload, prepared.key.operator


async def counted(
    request: Request, route: str, respond: Callable[[], Awaitable[tuple[Response, str]]]
) -> Response:
    """``respond()``'s response (and operator), with its metrics: status counts for every
    request, latency for the 200s."""
    runtime = runtime_of(request)
    started = time.perf_counter()
    status, operator = 500, "unknown"
    try:
        response, operator = await respond()
        status = 200
        return response
    except ApiError as error:
        status = error.status
        raise
    except ClientGone:
        status = 499  # nginx's "client closed request": counted, never sent
        return Response(status_code=499)
    finally:
        count(runtime, route, operator, status, started)


async def _serve(
    request: Request,
    route: str,
    model: type[Any],
    prepare: Callable[[Any], PreparedRequest],
) -> Response:
    async def respond() -> tuple[Response, str]:
        payload, operator = await _answer(request, runtime_of(request), model, prepare)
        return Response(payload, media_type="application/json"), operator

    return await counted(request, route, respond)


@router.post(
    "/v1/topk",
    summary="Top-k of each row, with optional JVP/VJP",
    openapi_extra={
        "parameters": [_TIMEOUT_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _REQUEST_SCHEMA}},
        },
    },
    responses={200: {"model": TopKResponse}, **ERROR_RESPONSES},
    response_class=Response,
)
async def topk(request: Request) -> Response:
    """Sparse, soft or hard top-k of each row of ``x``; the answer lists each row's support.

    The body is parsed and checked in full before the request is queued, so a bad request is
    refused alone (4xx naming the field) and never affects the requests batched with it.
    """
    engine = runtime_of(request).engine

    def prepare(parsed: TopKRequest) -> PreparedRequest:
        return prepare_request(parsed, engine)

    return await _serve(request, "/v1/topk", TopKRequest, prepare)


def _dense_endpoint(operator: str, model: type[DenseRequest]) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        engine = runtime_of(request).engine

        def prepare(parsed: DenseRequest) -> PreparedRequest:
            return prepare_dense_request(operator, parsed, engine)

        return await _serve(request, f"/v1/{operator}", model, prepare)

    endpoint.__name__ = operator
    endpoint.__doc__ = (
        f"{operator.capitalize()} of each row of ``x``, one value per entry, with optional "
        "JVP (``tangent``) and VJP (``cotangent``). 404 if this build's core lacks it."
    )
    return endpoint


DENSE_ROUTES: tuple[tuple[str, type[DenseRequest]], ...] = (
    ("sort", SoftSortRequest),
    ("rank", SoftSortRequest),
    ("isotonic", IsotonicRequest),
)

DENSE_ENDPOINTS = {name: _dense_endpoint(name, model) for name, model in DENSE_ROUTES}

for _name, _model in DENSE_ROUTES:
    router.add_api_route(
        f"/v1/{_name}",
        DENSE_ENDPOINTS[_name],
        methods=["POST"],
        summary=f"Soft {_name}" if _name != "isotonic" else "Isotonic regression",
        openapi_extra={
            "parameters": [_TIMEOUT_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _model.model_json_schema()}},
            },
        },
        responses={200: {"model": DenseResponse}, **ERROR_RESPONSES},
        response_class=Response,
    )


ALLOWED: dict[tuple[str, str], list[float | int | str]] = {
    ("sparse", "solver"): ["auto", "threshold", "pav", "dykstra"],
    ("sort", "regularization"): ["l2", "kl"],
    ("rank", "regularization"): ["l2", "kl"],
    ("isotonic", "solver"): ["pav", "dykstra"],
}


def operators_response(runtime: ServiceRuntime) -> OperatorsResponse:
    """What this server computes, with defaults read from the core and limits from the settings."""
    s = runtime.settings
    infos = []
    for name, available in runtime.operators.items():
        spec, defaults = available.spec, available.defaults
        parameters = []
        if spec.takes_k:
            parameters.append(
                ParameterInfo(name="k", type="int | list[int]", description="1 <= k <= row length")
            )
        if spec.takes_epsilon:
            parameters.append(
                ParameterInfo(
                    name="epsilon",
                    type="float | list[float]",
                    default=defaults.get("epsilon"),
                    description="> 0; one per row allowed",
                )
            )
        for knob in spec.static:
            if knob == "p":
                parameters.append(
                    ParameterInfo(
                        name="p", type="float", default=s.default_p, allowed=list(s.p_values)
                    )
                )
                continue
            default = defaults.get(knob)
            parameters.append(
                ParameterInfo(
                    name=knob,
                    type=type(default).__name__,
                    default=default,
                    allowed=ALLOWED.get((name, knob)),
                )
            )
        route = "/v1/topk" if spec.kind == "topk" else f"/v1/{name}"
        infos.append(
            OperatorInfo(
                name=name,
                route=route,
                outputs=list(available.functions),
                parameters=parameters,
                description=spec.description,
            )
        )
    return OperatorsResponse(operators=infos, limits=s.limits)


@router.get("/v1/operators", response_model=OperatorsResponse, summary="Operators and limits")
async def operators(request: Request) -> OperatorsResponse:
    """Operators, their outputs, parameters, defaults, and the size limits of this server."""
    return operators_response(runtime_of(request))
