"""uvicorn's HTTP/1.1 protocol, with small inference requests answered in place.

For a small request most of the server's time is HTTP plumbing rather than top-k: uvicorn starts
an ASGI task per request and runs the middleware and the ``receive``/``send`` coroutines around
the app (on the benchmark machine an echo answered at this level does twice the requests/s of the
same echo as an ASGI app). :class:`TopKHttpProtocol` is uvicorn's httptools protocol with one step
changed: a ``POST`` to an inference route (``/v1/...`` or an OIP ``/v2/models/<model>/infer``)
whose headers the ingress admits, with a body of at most 64 KiB, is held instead of being given a
task; when its body is complete, :meth:`~service.ingress.gate.Ingress.start` reads and queues it
from the parser's callback (or refuses it: a refused body is parsed once, here), and the answer is
written to the transport from its future's callback. A request whose headers the ingress refuses
(401, 413, 415, a 503 of a full queue or of the bodies' budget), whatever its size, is answered
at once, from its headers: its body, if it may be read at all (at most the body cap), is dropped
by the parser and the connection kept; otherwise the connection is closed after the answer.
Parsing, keep-alive, pipelining, flow control, shutdown and the access log stay uvicorn's.
Anything else (another route, an admitted bigger or chunked body, ``Expect: 100-continue``, a
pipelined request) starts uvicorn's ASGI task as usual, and the ASGI gate
(:mod:`service.ingress.asgi`) answers it.

The hook is uvicorn's ``HttpToolsProtocol._start_asgi_task`` (uvicorn >= 0.48, the range pinned in
pyproject.toml). :class:`TopKHttpProtocol` is a :class:`~service.ingress.guard.GuardedHttpProtocol`
(timeouts, header and connection caps); ``python -m service`` runs it when
``TOPK_HTTP_PROTOCOL=topk``, and the guard alone (every request through the ASGI gate) when it is
``uvicorn``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.errors import ApiError
from service.ingress.asgi import TopKApp
from service.ingress.gate import INLINE_BYTES, Endpoint, Pending, Reply
from service.ingress.guard import GuardedHttpProtocol, guarded
from service.ingress.headers import RequestHeaders

log = logging.getLogger(__name__)


@functools.cache
def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())


class TopKHttpProtocol(GuardedHttpProtocol):
    """One connection; ``topk_app`` is set on the subclass :func:`http_protocol` makes."""

    topk_app: ClassVar[TopKApp]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Headers seen, body still arriving:
        self._held: tuple[RequestResponseCycle, Endpoint, RequestHeaders] | None = None
        self._answering: Pending | None = None  # queued, answer not yet written

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if (
            app is self.app  # not uvicorn's 503 app for an exceeded concurrency limit
            and not self._over_cap  # beyond the connection cap: the guard answers
            and cycle is self.cycle  # not a pipelined request started late
            and cycle.more_body
            and not cycle.waiting_for_100_continue
            and cycle.scope["method"] == "POST"
        ):
            ingress = self.topk_app.ingress
            endpoint = ingress.endpoint(cycle.scope["path"])
            if endpoint is not None:
                headers = RequestHeaders(cycle.scope["headers"])
                refused = ingress.admit(endpoint, headers)
                if refused is not None:  # answered from its headers, whatever its size
                    self._refuse_in_place(cycle, endpoint, headers, refused)
                    return
                if headers.length is not None and headers.length <= INLINE_BYTES:
                    self._held = (cycle, endpoint, headers)
                    return
        super()._start_asgi_task(cycle, app)

    def _refuse_in_place(
        self,
        cycle: RequestResponseCycle,
        endpoint: Endpoint,
        headers: RequestHeaders,
        refused: ApiError,
    ) -> None:
        """A refusal before the body: the connection stays open and the parser drops the body
        if it may be read (at most the body cap); a body over the cap, or of unknown length, is
        not read: the connection is closed after the answer."""
        reply = self.topk_app.ingress.refuse(endpoint, refused, time.perf_counter())
        length = headers.length
        if length is not None and length <= self.topk_app.ingress.max_body:
            self._respond(cycle, reply)
        else:
            self._refuse(reply.status, reply.body, reply.headers)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        held, self._held = self._held, None
        if held is not None and held[0] is self.cycle and not held[0].response_complete:
            self._serve(*held)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        pending, self._answering = self._answering, None
        if pending is not None and not pending.future.done():
            pending.future.cancel()  # the batcher drops it unless its batch has been sent

    def _serve(
        self, cycle: RequestResponseCycle, endpoint: Endpoint, headers: RequestHeaders
    ) -> None:
        started = time.perf_counter()
        outcome = self.topk_app.ingress.start(endpoint, headers, bytes(cycle.body), started)
        if isinstance(outcome, Reply):
            self._respond(cycle, outcome)
            return
        self._answering = outcome
        outcome.future.add_done_callback(functools.partial(self._answered, cycle, outcome))

    def _answered(
        self, cycle: RequestResponseCycle, pending: Pending, future: asyncio.Future[Any]
    ) -> None:
        if self._answering is pending:
            self._answering = None
        ingress = self.topk_app.ingress
        if future.cancelled():  # the connection was lost while it waited
            ingress.gone(pending)
            return
        self._respond(cycle, ingress.finish(pending))

    def _respond(self, cycle: RequestResponseCycle, reply: Reply) -> None:
        """What ``RequestResponseCycle.send`` does for a response of known length."""
        if cycle.disconnected or self.transport.is_closing():
            return
        status, body = reply.status, reply.body
        parts = [_status_line(status)]
        for header, value in cycle.default_headers:
            parts += (header, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(body))
        for name, text in reply.headers.items():
            parts += (name.lower().encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.transport.write(b"".join(parts))
        if self.access_log:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            version = cycle.scope["http_version"]
            route = cycle.scope["path"]
            self.access_logger.info('%s - "POST %s HTTP/%s" %d', client, route, version, status)
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()


def http_protocol(app: TopKApp) -> type[HttpToolsProtocol]:
    """uvicorn's ``http`` setting for ``app``: :class:`TopKHttpProtocol` bound to it, or, under
    ``TOPK_HTTP_PROTOCOL=uvicorn`` (or a uvicorn without the hook), the guard alone."""
    runtime = app.runtime
    base: type[GuardedHttpProtocol] = GuardedHttpProtocol
    if runtime.settings.http_protocol == "topk":
        if hasattr(HttpToolsProtocol, "_start_asgi_task"):
            base = type("TopKAppHttpProtocol", (TopKHttpProtocol,), {"topk_app": app})
        else:  # outside the pinned range
            log.warning(
                "this uvicorn has no _start_asgi_task hook: every request takes the ASGI path"
            )
    bound: type[HttpToolsProtocol] = guarded(base, runtime.settings, runtime.metrics)
    return bound
