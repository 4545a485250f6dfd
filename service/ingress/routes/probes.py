"""Liveness, readiness and Prometheus metrics (with OIP-compatible health aliases)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.runtime import ServiceRuntime

router = APIRouter(tags=["probes"])


def _runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


@router.get("/healthz", summary="Liveness: the event loop answers")
@router.get("/v2/health/live", include_in_schema=False)
async def healthz() -> dict[str, bool]:
    """Never touches the device: a slow kernel must not get the process killed."""
    return {"live": True}


@router.get(
    "/readyz",
    summary="Readiness: warm and not draining",
    responses={503: {"description": "Warming up, draining or failed (the same body)."}},
)
@router.get("/v2/health/ready", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """200 once every warm-up kernel is compiled; 503 while warming, draining or failed."""
    runtime = _runtime(request)
    body: dict[str, object] = {"ready": runtime.ready, "state": runtime.state}
    if runtime.failure:
        body["failure"] = runtime.failure
    return JSONResponse(body, status_code=200 if runtime.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format at exactly ``/metrics`` (no redirect to ``/metrics/``)."""
    return Response(_runtime(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
