"""``POST /v1/topk`` (and the dense routes) served straight from ASGI when plainly valid.

For a small request, FastAPI's middleware stack, routing and a pydantic parse cost several times
the device call. :class:`TopKApp` is the FastAPI app with one difference: a ``POST`` to
``/v1/topk``, ``/v1/sort``, ``/v1/rank`` or ``/v1/isotonic`` with a JSON body of known length is
read here and, if its plain reader (:class:`~service.fast_request.PlainTopKReader`,
:class:`~service.fast_dense.PlainDenseReader`) accepts it, queued and answered without entering
the framework. Anything else (another route, a chunked or oversized body, another content type,
any doubt about the body) is handed to FastAPI with the body replayed, where the strict path
answers exactly as it would have.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from api.errors import ErrorBody
from service.errors import ApiError
from service.fast_dense import PlainDenseReader
from service.fast_request import PlainTopKReader
from service.runtime import ServiceRuntime
from service.submission import TIMEOUT_HEADER, ClientGone, answer, count, request_timeout

log = logging.getLogger(__name__)

ROUTE = "/v1/topk"
DENSE_ROUTES = {f"/v1/{name}": name for name in ("sort", "rank", "isotonic")}
FAST_ROUTES = frozenset({ROUTE, *DENSE_ROUTES})
INLINE_PARSE_BYTES = 64 * 1024  # larger bodies are parsed off the event loop
_TIMEOUT_HEADER = TIMEOUT_HEADER.encode()
_JSON_HEADERS = [(b"content-type", b"application/json")]


class PlainHeaders:
    """The three request headers the fast path looks at (ASGI gives them lower-cased)."""

    __slots__ = ("length", "json", "timeout")

    def __init__(self, scope: Scope) -> None:
        self.length: int | None = None
        self.json = False
        self.timeout: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                self.length = int(value) if value.isdigit() else None
            elif name == b"content-type":
                self.json = value.split(b";", 1)[0].strip().lower() == b"application/json"
            elif name == _TIMEOUT_HEADER:
                self.timeout = value.decode("latin-1")


async def _send(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    raw = [*_JSON_HEADERS, (b"content-length", b"%d" % len(body))]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the strict path: the body already read, then the connection as it is."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def plain_headers(scope: Scope, max_bytes: int) -> PlainHeaders | None:
    """The headers of a ``POST`` to a fast route with a JSON body of at most ``max_bytes``."""
    if scope["path"] not in FAST_ROUTES or scope["method"] != "POST":
        return None
    headers = PlainHeaders(scope)
    if not headers.json or headers.length is None or headers.length > max_bytes:
        return None
    return headers


def error_body(error: ApiError) -> bytes:
    return orjson.dumps(error.body.model_dump())


INTERNAL_ERROR = orjson.dumps(ErrorBody(error="internal server error").model_dump())


class TopKApp(FastAPI):
    """The service's FastAPI app, with the fast path of ``POST /v1/topk`` in front of it."""

    _readers: dict[str, PlainTopKReader | PlainDenseReader] | None = None

    @property
    def runtime(self) -> ServiceRuntime:
        runtime: ServiceRuntime = self.state.runtime
        return runtime

    def plain_reader(self, route: str = ROUTE) -> PlainTopKReader | PlainDenseReader | None:
        """The reader of ``route``'s plainly valid bodies, or None while the runtime takes no
        requests."""
        runtime = self.runtime
        if runtime.state not in ("ready", "warming", "draining"):
            return None  # the strict path answers (503, or the error it finds first)
        readers = self._readers
        if readers is None or readers[ROUTE].engine is not runtime.engine:
            engine = runtime.engine
            readers = self._readers = {
                ROUTE: PlainTopKReader(engine),
                **{path: PlainDenseReader(engine, name) for path, name in DENSE_ROUTES.items()},
            }
        return readers[route]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in FAST_ROUTES and scope["method"] == "POST":
            strict_receive = await self._fast(scope, receive, send)
            if strict_receive is None:
                return
            receive = strict_receive
        await super().__call__(scope, receive, send)

    async def _fast(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Serve the request and return None, or return the ``receive`` the strict path reads."""
        runtime = self.runtime
        route = scope["path"]
        headers = plain_headers(scope, runtime.settings.max_body_bytes)
        if headers is None:
            return receive  # the strict path streams it, or answers 413/415 naming the field
        started = time.perf_counter()
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        reader = self.plain_reader(route)
        if reader is None:
            return _replay(body, receive)
        if len(body) <= INLINE_PARSE_BYTES:
            prepared = reader.read(body)
        else:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(None, reader.read, body)
        if prepared is None:
            return _replay(body, receive)

        operator = prepared.key.operator
        status = 500
        try:
            timeout = request_timeout(headers.timeout, runtime.settings.request_timeout_ms)
            payload = await answer(runtime, prepared, timeout, receive)
            status = 200
            await _send(send, 200, payload)
        except ApiError as error:
            status = error.status
            await _send(send, status, error_body(error), error.headers)
        except ClientGone:
            status = 499  # nginx's "client closed request": counted, never sent
        except Exception:
            log.exception("unhandled error on POST %s", route)
            await _send(send, 500, INTERNAL_ERROR)
        finally:
            count(runtime, route, operator, status, started)
        return None
