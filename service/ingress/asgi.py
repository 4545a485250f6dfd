"""The ASGI gate: the service's FastAPI app, with the inference routes served by the ingress.

A ``POST`` to an inference route (``/v1/topk``, ``/v1/sort``, ``/v1/rank``, ``/v1/isotonic``, an OIP
``/v2/models/<model>/infer``) goes straight to :class:`~service.ingress.gate.Ingress`: FastAPI's
middleware stack, routing and dependency solving cost several times the device call of a small
request, and the ingress reads and checks the body itself. Every other request (probes, metrics,
``GET /v1/operators``, the OpenAPI document, 404s and 405s) is FastAPI's. The inference routes are
declared to FastAPI too, so that OpenAPI documents them; their endpoints call the same ingress
(:func:`respond`), should the app ever be mounted where this gate is not in front.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import Message, Receive, Scope, Send

from service.errors import ApiError
from service.ingress.gate import Endpoint, Ingress, Reply, error_reply
from service.ingress.headers import RequestHeaders
from service.runtime import ServiceRuntime


async def _read_body(
    receive: Receive, limit: int, ingress: Ingress, endpoint: Endpoint
) -> bytes | None:
    """The whole body (None: the client left first); ``ApiError(413)`` as soon as it is known to
    exceed ``limit`` bytes — ``Content-Length`` alone is not enough (a chunked body has none)."""
    chunks: list[bytes] = []
    received = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise ingress.too_large(endpoint, f"more than {limit}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def answer(
    ingress: Ingress, endpoint: Endpoint, scope: Scope, receive: Receive
) -> Reply | None:
    """One inference request read from ASGI and answered by the ingress (None: nothing to send)."""
    started = time.perf_counter()
    headers = RequestHeaders(scope["headers"])
    refused = ingress.admit(endpoint, headers)
    if refused is not None:
        return ingress.refuse(endpoint, refused, started)
    try:
        body = await _read_body(receive, ingress.runtime.settings.body_limit, ingress, endpoint)
    except ApiError as error:
        return ingress.refuse(endpoint, error, started)
    if body is None:
        return None
    return await ingress.serve(endpoint, headers, body, receive)


async def _send(send: Send, reply: Reply) -> None:
    raw = [(b"content-length", b"%d" % len(reply.body))]
    raw += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in reply.headers.items()
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": raw})
    await send({"type": "http.response.body", "body": reply.body})


class TopKApp(FastAPI):
    """The service's FastAPI app, with the ingress in front of its inference routes."""

    @property
    def runtime(self) -> ServiceRuntime:
        runtime: ServiceRuntime = self.state.runtime
        return runtime

    @property
    def ingress(self) -> Ingress:
        ingress: Ingress = self.state.ingress
        return ingress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.ingress.endpoint(scope["path"])
            if endpoint is not None:
                reply = await answer(self.ingress, endpoint, scope, receive)
                if reply is not None:
                    await _send(send, reply)
                return
        await super().__call__(scope, receive, send)


async def respond(request: Request) -> Response:
    """The endpoint of every documented inference route: the same ingress as the gate."""
    ingress: Ingress = request.app.state.ingress
    endpoint = ingress.endpoint(request.url.path)
    if endpoint is None:  # pragma: no cover - the routes are the ingress's own
        return _response(error_reply(ApiError(404, "not found")))
    reply = await answer(ingress, endpoint, request.scope, request.receive)
    return Response(status_code=499) if reply is None else _response(reply)


def _response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers)
