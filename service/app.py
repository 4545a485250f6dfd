"""The app factory: ``create_app(settings)`` builds the app, its runtime and its ingress."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.errors import install_error_handlers
from service.ingress.asgi import TopKApp
from service.ingress.gate import Ingress
from service.ingress.routes import oip, probes, v1
from service.ingress.routes.openapi import openapi_document
from service.runtime import ServiceRuntime
from service.settings import Settings

DESCRIPTION = """\
Differentiable top-k over HTTP. `POST /v1/topk` takes rows of scores and answers each row's
support (`indices`, `values`), with JVPs (`tangent`) and VJPs (`cotangent`) on request.
Requests are batched dynamically and run on kernels compiled ahead of time per shape bucket.
Every error answers `{"error": ..., "errors": [{"field": ..., "reason": ...}]}`.
"""


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(settings: Settings | None = None) -> TopKApp:
    """A new app with its own runtime and metrics registry (no module-level state)."""
    runtime = ServiceRuntime(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = TopKApp(
        title="topk-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.runtime = runtime
    app.state.ingress = Ingress(runtime)
    install_error_handlers(app)
    app.include_router(v1.router)
    app.include_router(probes.router)
    app.include_router(oip.router)
    app.openapi = functools.partial(openapi_document, app, runtime.settings)  # type: ignore[method-assign]
    return app
