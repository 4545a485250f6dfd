"""The gRPC gate: the KServe v2 / Triton ``GRPCInferenceService`` on ``TOPK_GRPC_PORT``.

Like the HTTP gates, this only moves messages. ``ModelInfer`` goes to the same ingress as every
HTTP inference request (:meth:`~service.ingress.gate.Ingress.answer_message`: same checks, queue,
batcher, kernels and metrics, route label ``/inference.GRPCInferenceService/ModelInfer``), and an
``ApiError`` becomes a gRPC status whose message names the field. Health, metadata, ``ModelConfig``
(perf_analyzer reads it before it sends anything) and ``RepositoryIndex`` answer what the HTTP
routes answer, from the same :class:`~service.ingress.oip_model.OipModel`. Every other RPC of
Triton's service (streaming, statistics, shared memory, load/unload) answers ``UNIMPLEMENTED``.

The server is a ``grpc.aio`` server made inside the app's lifespan, so it runs on uvicorn's event
loop (uvloop included) next to HTTP; objects made before the loop runs would belong to another
loop. gRPC does not survive ``fork()``: run one process per port, or uvicorn's spawned workers.
The lifespan stops it after uvicorn has drained HTTP: calls in progress finish within the grace,
new ones are refused. grpcio and tritonclient's generated messages (the ``grpc`` extra) are
imported only when this module is, i.e. only when ``TOPK_GRPC_PORT`` is set.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from api.oip import MODEL_VERSION, MODELS
from service.errors import ApiError
from service.ingress.gate import Ingress
from service.ingress.oip_model import OipModel
from service.ingress.oip_proto import ModelInferEndpoint
from service.settings import Settings

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0  # calls in progress when the server stops get this long to finish
CONNECTION_AGE_GRACE_MS = 10_000
# A 503's Retry-After as gRPC's server pushback (gRFC A6): retrying clients wait this long.
PUSHBACK = "grpc-retry-pushback-ms"
STATUS_CODES = {
    404: grpc.StatusCode.NOT_FOUND,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}  # any other 4xx (a request that can never succeed as sent): INVALID_ARGUMENT


def status_code(status: int) -> grpc.StatusCode:
    """The gRPC status of an HTTP status the ingress decided."""
    return STATUS_CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT)


def message_size_limit(settings: Settings) -> int:
    """The largest message either way: a request as large as the HTTP body cap; an answer of four
    float32 outputs per entry of the largest request (``max_entries`` bounds rows x longest row;
    ``max_rows * max_n`` is 2^32 entries with the defaults, and gRPC takes a C int here)."""
    return min(max(settings.max_body_bytes, 16 * settings.max_entries + 65536), 2**31 - 1)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's channel options for these settings (C ints, so each below 2^31)."""
    limit = message_size_limit(settings)
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # Off: two servers on one port would otherwise share it silently.
        ("grpc.so_reuseport", 0),
    ]
    if settings.grpc_max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", round(settings.grpc_max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
        ]
    return options


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The RPCs (named as the proto names them), each answered from the app's runtime and
    ingress."""

    def __init__(self, ingress: Ingress, name: str, version: str) -> None:
        self.ingress = ingress
        self.name, self.version = name, version
        self.endpoints = {
            model_name: ModelInferEndpoint(model) for model_name, model in ingress.models.items()
        }

    async def _refuse(self, context: Any, error: ApiError) -> None:
        if error.status == 503:
            seconds = self.ingress.runtime.settings.retry_after_seconds
            context.set_trailing_metadata(((PUSHBACK, str(seconds * 1000)),))
        await context.abort(status_code(error.status), error.body.error)

    async def _authorized(self, context: Any) -> None:
        """As over HTTP: with TOPK_API_KEYS set, every RPC but the health ones needs the metadata
        ``authorization: Bearer <key>`` (UNAUTHENTICATED otherwise)."""
        keys = self.ingress.api_keys
        if not keys:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization")
        refused = keys.refusal(None if given is None else str(given).encode("latin-1"))
        if refused is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refused.body.error)

    async def _model(self, name: str, version: str, context: Any) -> OipModel:
        model = self.ingress.oip_model(name)
        if model is None:
            reason = f"model: {name!r} is not served here (models: {', '.join(MODELS)})"
            await context.abort(grpc.StatusCode.NOT_FOUND, reason)
        elif version not in ("", MODEL_VERSION):
            reason = f"model_version: {version!r}: {name} has version {MODEL_VERSION}"
            await context.abort(grpc.StatusCode.NOT_FOUND, reason)
        assert model is not None
        return model

    # ------------------------------------------------------------------ health and metadata

    async def ServerLive(self, _request: Any, _context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, _request: Any, _context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.ingress.runtime.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await self._model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=self.ingress.runtime.ready)

    async def ServerMetadata(self, _request: Any, context: Any) -> Any:
        await self._authorized(context)
        return pb.ServerMetadataResponse(
            name=self.name, version=self.version, extensions=["model_configuration"]
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._authorized(context)
        model = await self._model(request.name, request.version, context)
        return json_format.ParseDict(model.metadata(), pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        await self._authorized(context)
        model = await self._model(request.name, request.version, context)
        return json_format.ParseDict({"config": model.config()}, pb.ModelConfigResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        await self._authorized(context)
        index = self.ingress.repository_index(ready_only=request.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse())

    # ------------------------------------------------------------------ inference

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        await self._authorized(context)
        endpoint = self.endpoints.get(request.model_name)
        if endpoint is None or not endpoint.model.served:
            await self._model(request.model_name, request.model_version, context)
        assert endpoint is not None
        try:
            return await self.ingress.answer_message(endpoint, request, context.time_remaining())
        except ApiError as error:
            await self._refuse(context, error)


class GrpcGate:
    """The running gRPC server of one app."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self.server = server
        self.port = port  # the bound port (TOPK_GRPC_PORT=0 picks one)

    @classmethod
    async def start(cls, ingress: Ingress, name: str, version: str) -> GrpcGate:
        """Bind ``TOPK_HOST:TOPK_GRPC_PORT`` and serve, on the running (uvicorn's) loop."""
        settings = ingress.runtime.settings
        server = grpc.aio.server(
            options=server_options(settings),
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(ingress, name, version), server
        )
        host = settings.host
        address = f"[{host}]" if ":" in host else host
        port = server.add_insecure_port(f"{address}:{settings.grpc_port}")
        if port == 0:  # older grpcio reports a failed bind this way instead of raising
            raise RuntimeError(f"gRPC could not bind {address}:{settings.grpc_port}")
        await server.start()
        log.info("OIP over gRPC on %s:%d", address, port)
        return cls(server, port)

    async def stop(self) -> None:
        """Refuse new calls, give those in progress the grace, then close."""
        await self.server.stop(STOP_GRACE_SECONDS)
