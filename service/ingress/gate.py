"""The one way in: every inference request, whichever gate it came through, is read, checked,
queued and answered here.

The entry gates (:mod:`service.ingress.protocol` inside uvicorn's HTTP protocol, and
:mod:`service.ingress.asgi` for everything else) only move bytes: they find the
:class:`Endpoint` of a path, collect the body and write the :class:`Reply`. Between the two,
:class:`Ingress` does every step once: :meth:`Ingress.admit` judges the headers (415, 413, 400),
:meth:`Ingress.start` decodes the body with the endpoint's codec (the ``/v1`` JSON reader or the OIP
codec: one parse, whether the body is accepted or refused) and queues its work unit, and
:meth:`Ingress.finish` encodes the answer's arrays for the protocol the request came in by, or
maps the reason it has none to a status. Every answer is counted here, by route, operator and
status.

Overload answers are decided here too: 503 with ``Retry-After`` when the queue is full (by count,
or by the work queued under the request's key), when the bodies in flight would pass their memory
budget (:mod:`service.ingress.budget`, judged on ``Content-Length`` before the body is read) or
when the server has stopped (never for a cold shape: the engine serves it from a cover kernel);
504 when the request's deadline passes while it is still queued (Triton's queue timeout,
``REJECT`` action). A client that disconnects while its request waits has the request taken out
of the queue, so no device time is spent on an answer nobody reads (status 499, counted, never
sent).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

import orjson
from starlette.types import Receive

from api.errors import ErrorBody, FieldError
from api.oip import MODEL_VERSION, MODELS
from api.registry import OPERATORS, Operator
from service.device.assembly import Answer
from service.device.batcher import BatcherClosed, DeadlineExceeded, QueueFull
from service.device.work import WorkUnit
from service.errors import ApiError
from service.ingress.auth import BearerKeys, authorization_of, scope_of
from service.ingress.budget import BodyBudget
from service.ingress.checks import Checks, field_error
from service.ingress.headers import TIMEOUT_HEADER, RequestHeaders
from service.ingress.oip_codec import OipCodec, split_body
from service.ingress.oip_model import OipModel, OipReply, summarised
from service.ingress.oip_model import invalid as oip_invalid
from service.ingress.pacing import BigBodyThread
from service.ingress.reader_process import ReaderProcess
from service.ingress.v1_reader import V1Reader
from service.ingress.v1_writer import dense_json, topk_json
from service.runtime import ServiceRuntime

log = logging.getLogger(__name__)

INLINE_BYTES = 64 * 1024  # bodies (and their answers) above this are read and written off the loop
# Requests answered sooner than this never pay for a disconnect watcher (a task per request);
# the ones that wait longer, which are the ones worth dropping, get one.
WATCH_AFTER_SECONDS = 0.02
JSON = {"content-type": "application/json"}
INTERNAL_ERROR = orjson.dumps(ErrorBody(error="internal server error").model_dump())


class Reply(NamedTuple):
    """An HTTP answer: status, body and headers (content-type included)."""

    status: int
    body: bytes
    headers: dict[str, str]


def error_reply(error: ApiError) -> Reply:
    return Reply(error.status, orjson.dumps(error.body.model_dump()), {**JSON, **error.headers})


class V1Endpoint:
    """A ``/v1`` route: JSON in (the registry-driven reader), JSON out."""

    json_only = True

    def __init__(self, route: str, reader: V1Reader, operator: str | None) -> None:
        self.route = route
        self.reader = reader
        self.operator = operator  # the route's own operator (dense routes); None: in the body
        self.topk = operator is None

    def decode(self, _headers: RequestHeaders, body: bytes) -> tuple[WorkUnit, Any]:
        return self.reader.read(body), None

    def encode(self, work: WorkUnit, _plan: Any, answer: Answer) -> Reply:
        key = work.key
        if self.topk:
            return Reply(200, topk_json(answer, key.operator, key.output), JSON)
        return Reply(200, dense_json(answer, key.operator), JSON)


class OipEndpoint:
    """``POST /v2/models/<model>/infer``: OIP tensors in and out, JSON or binary."""

    json_only = False  # Triton's own HTTP client sends no Content-Type; the framing tells

    def __init__(self, route: str, codec: OipCodec, operator: str | None) -> None:
        self.route = route
        self.codec = codec
        self.operator = operator

    def decode(self, headers: RequestHeaders, body: bytes) -> tuple[WorkUnit, OipReply]:
        header, binary = split_body(body, headers.header_length)
        return self.codec.decode(header, binary)

    def encode(self, _work: WorkUnit, plan: OipReply, answer: Answer) -> Reply:
        body, headers = self.codec.encode(plan, answer)
        return Reply(200, body, headers)


Endpoint = V1Endpoint | OipEndpoint


class MessageEndpoint(Protocol):
    """An inference method of a message protocol (gRPC's ``ModelInfer`` of one model): a request
    message in, a response message out (see :mod:`service.ingress.oip_proto`)."""

    route: str  # the metrics' route label
    operator: str | None

    def nbytes(self, message: Any) -> int: ...  # the size of the message's tensor data

    def decode(self, message: Any) -> tuple[WorkUnit, Any]: ...

    def encode(self, work: WorkUnit, plan: Any, answer: Answer) -> Any: ...


class Pending(NamedTuple):
    """A queued request: what it came by, what it asked, and the future of its answer."""

    endpoint: Endpoint | MessageEndpoint
    work: WorkUnit
    plan: Any
    future: asyncio.Future[Answer]
    started: float


def request_timeout(header: str | None, default_ms: float) -> float | None:
    """Seconds a request may stay queued: the header's value, at most the server's default."""
    limit = default_ms if default_ms > 0 else math.inf
    if header is not None:
        try:
            asked = float(header)
        except ValueError:
            asked = math.nan
        if not 0 < asked < math.inf:
            reason = f"expected a positive number of milliseconds, got {header!r}"
            raise field_error(TIMEOUT_HEADER, reason)
        limit = min(limit, asked)
    return None if limit == math.inf else limit / 1000.0


CURRENT_TOPK_ROUTE = "/topk"  # the current version's name of /v1/topk: the same endpoint


def _endpoints(checks: Checks, models: dict[str, OipModel]) -> dict[str, Endpoint]:
    offered = checks.operators
    routes: dict[str, tuple[Operator, ...]] = {}
    for operator in OPERATORS:
        routes.setdefault(operator.route, ())
        routes[operator.route] += (operator,)
    endpoints: dict[str, Endpoint] = {}
    for route, operators in routes.items():
        own = None if operators[0].family == "topk" else operators[0].name
        endpoints[route] = V1Endpoint(route, V1Reader(checks, operators, offered), own)
    # Same endpoint object: same reader, same gates, same metrics labels (route="/v1/topk").
    endpoints[CURRENT_TOPK_ROUTE] = endpoints["/v1/topk"]
    for name, model in models.items():
        route = f"/v2/models/{name}/infer"
        own = None if model.topk else name
        endpoint = OipEndpoint(route, OipCodec(model), own)
        endpoints[route] = endpoints[f"/v2/models/{name}/versions/{MODEL_VERSION}/infer"] = endpoint
    return endpoints


class Ingress:
    """Reads, checks, queues and answers the inference requests of one app."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.checks = Checks(runtime.settings, runtime.operators)
        self.models = {name: OipModel(self.checks, name, runtime.operators) for name in MODELS}
        self.endpoints = _endpoints(self.checks, self.models)
        settings = runtime.settings
        self._max_body = settings.max_body_bytes
        self._timeout_ms = settings.request_timeout_ms
        self.api_keys = BearerKeys(settings.api_keys)
        self.metrics_keys = BearerKeys(settings.metrics_api_keys)
        self.bodies = BodyBudget(settings.max_body_bytes_in_flight)
        runtime.metrics.body_bytes_in_flight.set_function(lambda: self.bodies.held)
        self.big_bodies = BigBodyThread(settings.big_body_share)
        self.reader_process = ReaderProcess(settings, self.decode)

    def close(self) -> None:
        """Stop what the ingress started (the body reader's process); after the runtime's drain."""
        self.reader_process.close()

    @property
    def max_body(self) -> int:
        return self._max_body

    def endpoint(self, path: str) -> Endpoint | None:
        """The inference endpoint of ``path`` (None: not an inference route)."""
        return self.endpoints.get(path)

    def oip_model(self, name: str) -> OipModel | None:
        """The OIP model of that name if this build serves it (None: an unknown model)."""
        model = self.models.get(name)
        return model if model is not None and model.served else None

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The models this build serves, each with its state (Triton's repository index)."""
        runtime = self.runtime
        state, reason = ("READY", "") if runtime.ready else ("UNAVAILABLE", runtime.state)
        if ready_only and state != "READY":
            return []
        return [
            {"name": name, "version": MODEL_VERSION, "state": state, "reason": reason}
            for name, model in self.models.items()
            if model.served
        ]

    # ------------------------------------------------------------------ the steps

    def admit(self, endpoint: Endpoint, headers: RequestHeaders) -> ApiError | None:
        """The headers' verdict before any of the body is read (None: read it): 401, 415, 413,
        400, or 503 when the queue or the bodies' budget is full (counted; each refusal is
        answered once)."""
        if self.api_keys:
            refused = self.api_keys.refusal(headers.authorization)
            if refused is not None:
                return summarised(refused) if isinstance(endpoint, OipEndpoint) else refused
        if headers.encoding != "identity":
            reason = f"{headers.encoding!r} is not supported; send the body uncompressed"
            return self._field(endpoint, "content-encoding", reason, 415)
        if endpoint.json_only and not headers.json:
            reason = f"expected application/json, got {headers.media_type or 'nothing'!r}"
            return self._field(endpoint, "content-type", reason, 415)
        if headers.length_text is not None and headers.length is None:
            reason = f"not a byte count: {headers.length_text!r}"
            return self._field(endpoint, "content-length", reason, 400)
        length = headers.length
        if length is not None and length > self._max_body:
            return self.too_large(endpoint, str(length))
        if length is not None and length > INLINE_BYTES and not self.bodies.fits(length):
            why = (
                f"{self.bodies.held} bytes of bodies are being read or answered; this one's"
                f" {length} would pass the budget of {self.bodies.limit}"
            )
            return self.unavailable("body_budget", why)
        runtime = self.runtime
        if runtime.queue_full:
            why = f"{runtime.batcher.depth} requests queued (max {runtime.settings.max_queued_requests})"
            return self.unavailable("queue_full", why)
        return None

    def authorize(self, path: str, raw_headers: Iterable[tuple[bytes, bytes]]) -> ApiError | None:
        """The 401 of a request to a non-inference route that needs a key it lacks (else None)."""
        scope = scope_of(path)
        keys = self.api_keys if scope == "api" else self.metrics_keys if scope else None
        if not keys:
            return None
        refused = keys.refusal(authorization_of(raw_headers))
        if refused is not None:
            self.runtime.metrics.refuse("http_401")
        return refused

    def too_large(self, endpoint: Endpoint, seen: str) -> ApiError:
        reason = f"the body is {seen} bytes; at most {self._max_body}"
        return self._field(endpoint, "body", reason, 413)

    def _field(self, endpoint: Endpoint, field: str, reason: str, status: int) -> ApiError:
        if isinstance(endpoint, OipEndpoint):
            return oip_invalid(field, reason, status)
        summary = {413: "request body too large", 415: "unsupported media type"}.get(status)
        return ApiError(status, summary or "bad request", [FieldError(field=field, reason=reason)])

    def decode(
        self, endpoint: Endpoint, headers: RequestHeaders, body: bytes
    ) -> tuple[WorkUnit, Any]:
        """The work unit of a body (``ApiError`` naming the field, summarised for OIP)."""
        try:
            timeout = request_timeout(headers.timeout, self._timeout_ms)
            work, plan = endpoint.decode(headers, body)
        except ApiError as error:
            raise summarised(error) if isinstance(endpoint, OipEndpoint) else error from None
        return work, (plan, timeout)

    def enqueue(
        self,
        endpoint: Endpoint | MessageEndpoint,
        work: WorkUnit,
        plan: tuple[Any, float | None],
        started: float,
    ) -> Pending:
        """Queue ``work``; ``ApiError`` (503) at once when it cannot be."""
        runtime = self.runtime
        # Draining (readiness false) still serves: what arrives meanwhile is answered, until the
        # batcher closes, after uvicorn has stopped accepting and every connection has finished.
        if runtime.state in ("stopped", "starting"):
            why = "starting" if runtime.state == "starting" else "shutting down"
            raise self.unavailable("draining", f"the server is {why}")
        answer_plan, timeout = plan
        try:
            rows = work.rows
            future = runtime.batcher.enqueue(work.key, work, rows, timeout, rows * work.key.n)
        except QueueFull as error:
            raise self.unavailable("queue_full", str(error)) from None
        except BatcherClosed as error:
            raise self.unavailable("draining", str(error)) from None
        return Pending(endpoint, work, answer_plan, future, started)

    def start(
        self, endpoint: Endpoint, headers: RequestHeaders, body: bytes, started: float
    ) -> Reply | Pending:
        """Decode and queue a body on the event loop (small bodies); a refusal is a Reply."""
        self.big_bodies.small_seen = started
        try:
            work, plan = self.decode(endpoint, headers, body)
            return self.enqueue(endpoint, work, plan, started)
        except ApiError as error:
            return self.refuse(endpoint, error, started)
        except Exception:  # a server fault: never let it look like a client's (or HTTP's) fault
            log.exception("reading POST %s failed", endpoint.route)
            self.count(endpoint.route, endpoint.operator or "unknown", 500, started)
            return Reply(500, INTERNAL_ERROR, JSON)

    def finish(self, pending: Pending) -> Reply:
        """The reply of a request whose future is done (not cancelled), counted."""
        endpoint, work = pending.endpoint, pending.work
        operator = work.key.operator
        future = pending.future
        error = future.exception()
        if error is None:
            try:
                reply = endpoint.encode(work, pending.plan, future.result())
            except Exception:  # noqa: BLE001 — a fault of this answer only
                log.exception("encoding the answer of POST %s failed", endpoint.route)
                reply = Reply(500, INTERNAL_ERROR, JSON)
        else:
            mapped = self.failure(error)
            if mapped is None:
                log.error("unhandled error on POST %s", endpoint.route, exc_info=error)
                reply = Reply(500, INTERNAL_ERROR, JSON)
            else:
                if isinstance(endpoint, OipEndpoint):
                    mapped = summarised(mapped)
                reply = error_reply(mapped)
        self.count(endpoint.route, operator, reply.status, pending.started)
        return reply

    def refuse(
        self, endpoint: Endpoint, error: ApiError, started: float, operator: str | None = None
    ) -> Reply:
        """The reply of a request refused before it was queued, counted."""
        self.count(
            endpoint.route, operator or endpoint.operator or "unknown", error.status, started
        )
        return error_reply(error)

    def gone(self, pending: Pending) -> None:
        """The client left while its request waited: counted as 499, nothing to send."""
        self.runtime.metrics.rejections.labels("client_disconnected").inc()
        self.count(pending.endpoint.route, pending.work.key.operator, 499, pending.started)

    def failure(self, error: BaseException) -> ApiError | None:
        """The answer for an exception a queued request ended with; None for a server fault."""
        if isinstance(error, DeadlineExceeded):
            self.runtime.metrics.rejections.labels("deadline").inc()
            return ApiError(
                504, "deadline exceeded", [FieldError(field="request", reason=str(error))]
            )
        if isinstance(error, BatcherClosed):
            return self.unavailable("draining", str(error))
        return None

    def unavailable(self, reason: str, why: str) -> ApiError:
        """A 503 that tells the client when to retry, counted under ``reason``."""
        runtime = self.runtime
        runtime.metrics.rejections.labels(reason).inc()
        return ApiError(
            503,
            "service unavailable",
            [FieldError(field="request", reason=why)],
            headers={"Retry-After": str(runtime.settings.retry_after_seconds)},
        )

    def count(self, route: str, operator: str, status: int, started: float) -> None:
        """Every answer counts by route, operator and status; the 200s also time their latency."""
        self.runtime.metrics.count_request(route, operator, status, time.perf_counter() - started)

    # ------------------------------------------------------------------ the ASGI side

    async def serve(
        self, endpoint: Endpoint, headers: RequestHeaders, body: bytes, receive: Receive
    ) -> Reply | None:
        """The whole of one request on the ASGI side: big bodies are decoded and their answers
        encoded off the event loop; None when the client left before its answer (499)."""
        started = time.perf_counter()
        big = len(body) > INLINE_BYTES
        loop = asyncio.get_running_loop()
        try:
            if big:
                big_bodies = self.big_bodies
                decode = self.reader_process.decode
                work, plan = await loop.run_in_executor(
                    big_bodies.executor, big_bodies.run, decode, endpoint, headers, body
                )
            else:
                self.big_bodies.small_seen = started
                work, plan = self.decode(endpoint, headers, body)
            pending = self.enqueue(endpoint, work, plan, started)
        except ApiError as error:
            return self.refuse(endpoint, error, started)
        except Exception:
            log.exception("reading POST %s failed", endpoint.route)
            self.count(endpoint.route, endpoint.operator or "unknown", 500, started)
            return Reply(500, INTERNAL_ERROR, JSON)
        if not await _settled(pending.future, receive):
            self.gone(pending)
            return None
        if big:
            big_bodies = self.big_bodies
            return await loop.run_in_executor(
                big_bodies.executor, big_bodies.run, self.finish, pending
            )
        return self.finish(pending)

    # ------------------------------------------------------------------ the message side

    def queue_timeout(self, remaining: float | None) -> float | None:
        """Seconds a request may stay queued: the client's remaining time (a gRPC deadline), at
        most the server's ``TOPK_REQUEST_TIMEOUT_MS``."""
        limit = self._timeout_ms / 1000.0 if self._timeout_ms > 0 else math.inf
        if remaining is not None:
            limit = min(limit, max(remaining, 0.0))
        return None if limit == math.inf else limit

    async def answer_message(
        self, endpoint: MessageEndpoint, message: Any, remaining: float | None
    ) -> Any:
        """The whole of one request of a message protocol (gRPC): its response message, or
        ``ApiError`` (summarised, naming the field) for the gate to map to the protocol's status.
        Counted like HTTP answers, under the endpoint's route and the HTTP status the same request
        would have had over HTTP (499 when the client cancelled it while it was queued)."""
        started = time.perf_counter()
        route = endpoint.route
        loop = asyncio.get_running_loop()
        big = endpoint.nbytes(message) > INLINE_BYTES  # off the loop, as HTTP's large bodies
        try:
            if big:
                work, plan = await loop.run_in_executor(None, endpoint.decode, message)
            else:
                work, plan = endpoint.decode(message)
            pending = self.enqueue(endpoint, work, (plan, self.queue_timeout(remaining)), started)
        except ApiError as error:
            self.count(route, endpoint.operator or "unknown", error.status, started)
            raise summarised(error) from None
        except Exception:  # a server fault: never let it look like a client's
            log.exception("reading %s failed", route)
            self.count(route, endpoint.operator or "unknown", 500, started)
            raise ApiError(500, "internal server error") from None
        operator = work.key.operator
        try:
            answer = await pending.future
        except asyncio.CancelledError:  # the call was cancelled: the batcher drops the request
            pending.future.cancel()
            self.gone(pending)
            raise
        except Exception as error:  # noqa: BLE001 — the request's own failure, mapped here
            mapped = self.failure(error)
            if mapped is None:
                log.error("unhandled error on %s", route, exc_info=error)
                mapped = ApiError(500, "internal server error")
            self.count(route, operator, mapped.status, started)
            raise summarised(mapped) from None
        try:
            if big:
                response = await loop.run_in_executor(
                    None, endpoint.encode, work, pending.plan, answer
                )
            else:
                response = endpoint.encode(work, pending.plan, answer)
        except Exception:
            log.exception("encoding the answer of %s failed", route)
            self.count(route, operator, 500, started)
            raise ApiError(500, "internal server error") from None
        self.count(route, operator, 200, started)
        return response


async def _settled(future: asyncio.Future[Answer], receive: Receive) -> bool:
    """Wait for ``future``; False if the client disconnected first (the future is cancelled, so
    the batcher drops the request unless its batch has been sent)."""
    watchers: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    timer = loop.call_later(WATCH_AFTER_SECONDS, _watch, receive, future, watchers)
    try:
        await future
    except asyncio.CancelledError:
        if future.cancelled() and watchers and watchers[0].done():
            return False
        raise  # the server is stopping this task: the request goes with it
    except Exception:  # noqa: BLE001 — the request's own failure, mapped by Ingress.finish
        pass
    finally:
        timer.cancel()
        for watcher in watchers:
            watcher.cancel()
    return True


def _watch(
    receive: Receive, future: asyncio.Future[Any], watchers: list[asyncio.Task[None]]
) -> None:
    if not future.done():
        watchers.append(asyncio.ensure_future(_cancel_on_disconnect(receive, future)))


async def _cancel_on_disconnect(receive: Receive, future: asyncio.Future[Any]) -> None:
    # After the body, an ASGI server's receive() returns only once the client has gone.
    while (await receive())["type"] != "http.disconnect":
        pass
    future.cancel()
