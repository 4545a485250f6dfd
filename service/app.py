"""The app factory: ``create_app(settings)`` builds the app, its runtime and its ingress."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.errors import install_error_handlers
from service.ingress.asgi import TopKApp
from service.ingress.gate import Ingress
from service.ingress.routes import oip, probes, v1
from service.ingress.routes.docs import install_docs
from service.ingress.routes.openapi import openapi_document
from service.runtime import ServiceRuntime
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Differentiable top-k over HTTP. `POST /v1/topk` takes rows of scores and answers each row's
support (`indices`, `values`), with JVPs (`tangent`) and VJPs (`cotangent`) on request.
Requests are batched dynamically and run on kernels compiled ahead of time per shape bucket.
Every error answers `{"error": ..., "errors": [{"field": ..., "reason": ...}]}`.
"""


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


async def _start_grpc(app: FastAPI) -> Any:
    """OIP over gRPC on ``TOPK_GRPC_PORT`` (None when off). grpcio comes with the ``grpc`` extra:
    without it a port left at its default only logs a warning, a port set explicitly fails."""
    settings: Settings = app.state.runtime.settings
    app.state.grpc_port = None
    if settings.grpc_port is None:
        return None
    try:
        from service.ingress.grpc_gate import GrpcGate
    except ImportError as error:
        if "grpc_port" in settings.model_fields_set:
            raise RuntimeError(
                f"TOPK_GRPC_PORT is set but gRPC is not installed ({error}): "
                "pip install 'topk-service[grpc]', or set TOPK_GRPC_PORT='' to turn it off"
            ) from error
        log.warning("gRPC is off: %s (pip install 'topk-service[grpc]' turns it on)", error)
        return None
    gate = await GrpcGate.start(app.state.ingress, app.title, app.version)
    app.state.grpc_port = gate.port
    return gate


def create_app(settings: Settings | None = None) -> TopKApp:
    """A new app with its own runtime and metrics registry (no module-level state)."""
    runtime = ServiceRuntime(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        grpc = None
        try:
            grpc = await _start_grpc(app)
            yield
        finally:
            # uvicorn runs this after its HTTP drain; gRPC calls in progress finish first, then
            # the queue drains.
            if grpc is not None:
                await grpc.stop()
            await runtime.stop()
            app.state.ingress.close()

    app = TopKApp(
        title="topk-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,  # served by install_docs, from local assets
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.ingress = Ingress(runtime)
    app.state.grpc_port = None  # the bound gRPC port while it serves
    install_error_handlers(app)
    app.include_router(v1.router)
    app.include_router(probes.router)
    app.include_router(oip.router)
    install_docs(app)
    app.openapi = functools.partial(openapi_document, app, runtime.settings)  # type: ignore[method-assign]
    return app
