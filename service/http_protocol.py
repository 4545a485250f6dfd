"""uvicorn's HTTP/1.1 protocol, with small plain ``POST /v1/topk`` requests answered in place.

For a small request most of the server's time is HTTP plumbing rather than top-k: uvicorn starts
an ASGI task per request and runs the middleware and the ``receive``/``send`` coroutines around
the app (on the benchmark machine an echo answered at this level does twice the requests/s of the
same echo as an ASGI app). :class:`TopKHttpProtocol` is uvicorn's httptools protocol with one step
changed: a ``POST`` to ``/v1/topk`` (or ``/v1/sort``, ``/v1/rank``, ``/v1/isotonic``) with a JSON
body of at most 64 KiB is held instead of being given a task; when its body is complete and its
plain reader (:meth:`~service.fast_path.TopKApp.plain_reader`) accepts it, it is queued from the parser's callback and its answer is written to the transport from its
future's callback. Parsing, keep-alive, pipelining, flow control, shutdown and the access log stay
uvicorn's. Anything else (another route, a bigger or chunked body, ``Expect: 100-continue``, a
pipelined request, a body the plain reader leaves to pydantic) starts uvicorn's ASGI task as
usual, with the body already read, and :class:`~service.fast_path.TopKApp` answers it.

The hook is uvicorn's ``HttpToolsProtocol._start_asgi_task`` (uvicorn >= 0.48); without it,
:func:`http_protocol` falls back to uvicorn's own choice and every request takes the ASGI path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from http import HTTPStatus
from typing import Any, ClassVar, cast

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.errors import ApiError
from service.fast_path import (
    INLINE_PARSE_BYTES,
    INTERNAL_ERROR,
    PlainHeaders,
    TopKApp,
    error_body,
    plain_headers,
)
from service.submission import client_gone, count, failure, request_timeout, submit

log = logging.getLogger(__name__)


@functools.cache
def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())


class TopKHttpProtocol(HttpToolsProtocol):
    """One connection; ``topk_app`` is set on the subclass :func:`http_protocol` makes."""

    topk_app: ClassVar[TopKApp]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Headers seen, body still arriving:
        self._held: tuple[RequestResponseCycle, PlainHeaders] | None = None
        self._answering: asyncio.Future[bytes] | None = None  # queued, answer not yet written

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if (
            app is self.app  # not uvicorn's 503 app for an exceeded concurrency limit
            and cycle is self.cycle  # not a pipelined request started late
            and cycle.more_body
            and not cycle.waiting_for_100_continue
        ):
            limit = min(INLINE_PARSE_BYTES, self.topk_app.runtime.settings.max_body_bytes)
            headers = plain_headers(cast(Scope, cycle.scope), limit)
            if headers is not None:
                self._held = (cycle, headers)
                return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        held, self._held = self._held, None
        if held is not None and held[0] is self.cycle and not held[0].response_complete:
            self._serve(*held)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        future, self._answering = self._answering, None
        if future is not None and not future.done():
            client_gone(self.topk_app.runtime)  # counted as a rejection
            future.cancel()  # the batcher drops it unless its batch has been sent

    def _serve(self, cycle: RequestResponseCycle, headers: PlainHeaders) -> None:
        started = time.perf_counter()
        app = self.topk_app
        runtime = app.runtime
        route = cycle.scope["path"]
        reader = app.plain_reader(route)
        prepared = None if reader is None else reader.read(bytes(cycle.body))
        if prepared is None:  # the ASGI app answers it, on the strict path
            super()._start_asgi_task(cycle, self.app)
            return
        operator = prepared.key.operator
        try:
            timeout = request_timeout(headers.timeout, runtime.settings.request_timeout_ms)
            future = submit(runtime, prepared, timeout)
        except ApiError as error:
            self._respond(cycle, error.status, error_body(error), error.headers)
            count(runtime, route, operator, error.status, started)
            return
        self._answering = future
        future.add_done_callback(functools.partial(self._answered, cycle, operator, started))

    def _answered(
        self,
        cycle: RequestResponseCycle,
        operator: str,
        started: float,
        future: asyncio.Future[bytes],
    ) -> None:
        if self._answering is future:
            self._answering = None
        runtime = self.topk_app.runtime
        route = cycle.scope["path"]
        if future.cancelled():  # the connection was lost while it waited
            count(runtime, route, operator, 499, started)
            return
        error = future.exception()
        headers: dict[str, str] | None = None
        if error is None:
            status, body = 200, future.result()
        else:
            mapped = failure(runtime, error)
            if mapped is None:
                log.error("unhandled error on POST %s", route, exc_info=error)
                status, body = 500, INTERNAL_ERROR
            else:
                status, body, headers = mapped.status, error_body(mapped), mapped.headers
        self._respond(cycle, status, body, headers)
        count(runtime, route, operator, status, started)

    def _respond(
        self,
        cycle: RequestResponseCycle,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        """What ``RequestResponseCycle.send`` does for a JSON response of known length."""
        if cycle.disconnected or self.transport.is_closing():
            return
        parts = [_status_line(status)]
        for header, value in cycle.default_headers:
            parts += (header, b": ", value, b"\r\n")
        parts.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        for name, text in (headers or {}).items():
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


def http_protocol(app: TopKApp) -> type[HttpToolsProtocol] | str:
    """uvicorn's ``http`` setting for ``app``: :class:`TopKHttpProtocol` bound to it, or "auto"."""
    if not hasattr(HttpToolsProtocol, "_start_asgi_task"):
        log.warning("this uvicorn has no _start_asgi_task hook: every request takes the ASGI path")
        return "auto"
    return type("BoundTopKHttpProtocol", (TopKHttpProtocol,), {"topk_app": app})
