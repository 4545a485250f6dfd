"""Queueing one prepared request and waiting for its answer, on both the fast and strict paths.

Overload answers are decided here: 503 with ``Retry-After`` when the queue is full, the server is
draining or a bucket is not warm; 504 when the request's deadline passes while it is still queued
(Triton's queue timeout, ``REJECT`` action). A client that disconnects while its request waits has
the request taken out of the queue, so no device time is spent on an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from starlette.types import Receive

from api.errors import FieldError
from service.batcher import BatcherClosed, DeadlineExceeded, QueueFull
from service.engine import BucketNotWarm
from service.errors import ApiError
from service.prepared import PreparedRequest
from service.runtime import ServiceRuntime

TIMEOUT_HEADER = "x-request-timeout-ms"
# Requests answered sooner than this never pay for a disconnect watcher (a task per request);
# the ones that wait longer, which are the ones worth dropping, get one.
WATCH_AFTER_SECONDS = 0.02


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nothing is sent."""


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
            raise ApiError(
                422, "invalid request", [FieldError(field=TIMEOUT_HEADER, reason=reason)]
            )
        limit = min(limit, asked)
    return None if limit == math.inf else limit / 1000.0


def unavailable(runtime: ServiceRuntime, reason: str, why: str) -> ApiError:
    """A 503 that tells the client when to retry, counted under ``reason``."""
    runtime.metrics.rejections.labels(reason).inc()
    return ApiError(
        503,
        "service unavailable",
        [FieldError(field="request", reason=why)],
        headers={"Retry-After": str(runtime.settings.retry_after_seconds)},
    )


async def _cancel_on_disconnect(receive: Receive, future: asyncio.Future[Any]) -> None:
    # After the body, an ASGI server's receive() returns only once the client has gone.
    while (await receive())["type"] != "http.disconnect":
        pass
    future.cancel()


def _watch(
    receive: Receive, future: asyncio.Future[Any], watchers: list[asyncio.Task[None]]
) -> None:
    if not future.done():
        watchers.append(asyncio.ensure_future(_cancel_on_disconnect(receive, future)))


def submit(
    runtime: ServiceRuntime, prepared: PreparedRequest, timeout: float | None
) -> asyncio.Future[bytes]:
    """Queue ``prepared``; the future of its JSON answer, or ``ApiError`` (503) at once."""
    if runtime.state in ("draining", "stopped"):
        raise unavailable(runtime, "draining", "the server is shutting down")
    try:
        return runtime.batcher.enqueue(prepared.key, prepared, prepared.rows, timeout)
    except QueueFull as error:
        raise unavailable(runtime, "queue_full", str(error)) from None
    except BatcherClosed as error:
        raise unavailable(runtime, "draining", str(error)) from None


def failure(runtime: ServiceRuntime, error: BaseException) -> ApiError | None:
    """The answer for an exception a queued request ended with; None for a server fault."""
    if isinstance(error, DeadlineExceeded):
        runtime.metrics.rejections.labels("deadline").inc()
        return ApiError(504, "deadline exceeded", [FieldError(field="request", reason=str(error))])
    if isinstance(error, BatcherClosed):
        return unavailable(runtime, "draining", str(error))
    if isinstance(error, BucketNotWarm):
        return unavailable(runtime, "not_warm", str(error))
    return None


def client_gone(runtime: ServiceRuntime) -> ClientGone:
    runtime.metrics.rejections.labels("client_disconnected").inc()
    return ClientGone()


async def answer(
    runtime: ServiceRuntime, prepared: PreparedRequest, timeout: float | None, receive: Receive
) -> bytes:
    """Queue ``prepared`` and return its JSON answer (``ApiError`` for 503/504, or ``ClientGone``)."""
    future = submit(runtime, prepared, timeout)
    watchers: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    timer = loop.call_later(WATCH_AFTER_SECONDS, _watch, receive, future, watchers)
    try:
        return await future
    except asyncio.CancelledError:
        if future.cancelled() and watchers and watchers[0].done():
            raise client_gone(runtime) from None
        raise
    except (DeadlineExceeded, BatcherClosed, BucketNotWarm) as error:
        mapped = failure(runtime, error)
        assert mapped is not None
        raise mapped from None
    finally:
        timer.cancel()
        for watcher in watchers:
            watcher.cancel()


def count(runtime: ServiceRuntime, route: str, operator: str, status: int, started: float) -> None:
    """Every answer counts by route, operator and status; the 200s also time their latency."""
    runtime.metrics.count_request(route, operator, status, time.perf_counter() - started)
