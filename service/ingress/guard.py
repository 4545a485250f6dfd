"""The connection guard: uvicorn's httptools protocol with the limits uvicorn does not have.

uvicorn (0.55) arms no timer while a request's headers or body arrive (its keep-alive timer runs
only *between* requests), lets httptools buffer a header of any size, and has no connection cap
but ``limit_concurrency``, which answers 503 only once the headers are in, so it makes slow
clients worse. Measured against the service before this module: 200 sockets trickling one byte a
second and 10 silent ones were still open after 100 s; ~20k silent connections used up the
process's file descriptors and ``/healthz`` stopped answering; a 150 MB header was read in full
and answered 200 while every other client stalled ~2 s. :class:`GuardedHttpProtocol` adds, per
connection (settings in brackets):

- a header deadline (``TOPK_HEADER_TIMEOUT_S``), from the connection's opening, or from a later
  request's first byte, to the end of its headers: 408, then the connection is closed (a
  connection that sent nothing is closed without an answer);
- a body deadline: no pause between two reads longer than ``TOPK_BODY_IDLE_TIMEOUT_S``, and the
  whole body within ``TOPK_BODY_TIMEOUT_S`` of its headers (408, closed). A pause while the
  server itself is not reading (flow control: the app has not taken the bytes yet) is not the
  client's, but the total deadline holds regardless;
- a cap on the request line plus headers (``TOPK_MAX_HEADER_BYTES``): 431 naming the largest
  field (414 for the request target), as soon as the bytes received for the headers pass the cap,
  so at most one socket read beyond it is ever taken in;
- a connection cap (``TOPK_MAX_CONNECTIONS``): beyond it, ``TOPK_PROBE_CONNECTIONS`` more are
  accepted for one probe each (``GET /healthz``, ``/readyz``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/metrics``; answered as usual, then closed) with a 2 s header deadline,
  and anything else on them gets 503 with ``Retry-After``; beyond both, a connection is closed
  as soon as it is accepted. So a flood of idle sockets can neither use up the file descriptors
  nor keep the orchestrator's probes out.

A refusal sent while the client is still sending stops reading, half-closes the connection (so
the client can read the answer) and closes it :data:`LINGER_S` later: a close with unread bytes
resets the connection, and the client would lose the answer.

Timers cost nothing on the common path: a request that arrives in one read (headers and body)
never arms one; only a request spread over several reads does, and only until it is complete.
``python -m service`` always runs this protocol (the in-place answering of
:mod:`service.ingress.protocol` is a subclass of it); under a bare ``uvicorn`` the app runs
without these limits, and needs a proxy in front that has them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.observability.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger(__name__)

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"})
PROBE_HEADER_TIMEOUT_S = 2.0  # a connection beyond the cap has this long to ask its probe
LINGER_S = 1.0  # after a refusal mid-request: time for the client to read it before the reset
_LINE_HEAD = 64  # bytes kept of the header line being read, to name it if it is too long

# File descriptors the process needs besides its connections (JAX, XLA, logs, the listener).
OTHER_DESCRIPTORS = 256

# Where a connection stands in its current request.
_IDLE = 0  # between requests (uvicorn's keep-alive timer), or answering one
_HEADERS = 1  # request line and headers arriving
_BODY = 2  # headers in, body arriving


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop the parse (httptools wraps it)."""


@dataclass(frozen=True)
class GuardLimits:
    max_header_bytes: int
    header_timeout: float
    body_idle_timeout: float
    body_timeout: float
    max_connections: int
    probe_connections: int
    retry_after: int

    @classmethod
    def of(cls, settings: Settings) -> GuardLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout_s,
            body_idle_timeout=settings.body_idle_timeout_s,
            body_timeout=settings.body_timeout_s,
            max_connections=settings.max_connections,
            probe_connections=settings.probe_connections,
            retry_after=settings.retry_after_seconds,
        )


def _error_body(summary: str, field: str, reason: str) -> bytes:
    return orjson.dumps({"error": summary, "errors": [{"field": field, "reason": reason}]})


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection. ``guard`` and ``metrics`` are set on the subclass :func:`guarded` makes."""

    guard: ClassVar[GuardLimits]
    metrics: ClassVar[ServiceMetrics]
    _tracked: ClassVar[bool] = False  # the open-connections gauge reads this server's set

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url = b""  # uvicorn sets it at a request's first byte; a silent connection has none
        self._phase = _HEADERS  # a new connection waits for its first request
        self._timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # received while this request's headers were incomplete
        self._begun = False  # a request began in the read being parsed
        self._chunk = 0  # size of the read being parsed
        self._line_head = b""  # start of the header line being read (only while incomplete)
        self._body_started = 0.0
        self._last_read = 0.0
        self._over_cap = False  # beyond the connection cap: one probe, nothing else
        self._closing = False  # refused: whatever else arrives is dropped

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        others = len(self.connections)
        super().connection_made(transport)
        cls = type(self)
        if not cls._tracked:
            cls._tracked = True
            self.metrics.track_connections(self.connections)
        guard = self.guard
        deadline = guard.header_timeout
        if others >= guard.max_connections:
            if others >= guard.max_connections + guard.probe_connections:
                self._closing = True
                self.metrics.refuse("connections")
                transport.close()
                return
            self._over_cap = True
            deadline = min(deadline, PROBE_HEADER_TIMEOUT_S)
        self._timer = self.loop.call_later(deadline, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._unset_keepalive_if_required()
        self._chunk = len(data)
        self._begun = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._closing:  # our own refusal, raised from a callback
                return
            self._parse_error()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._parse_error()
            return
        if self._closing:
            return
        phase = self._phase
        if phase == _HEADERS:
            if self._begun:  # what of this read is the new request's (the rest ended another)
                self._header_bytes = len(self.url) + sum(
                    len(n) + len(v) + 4 for n, v in self.headers
                )
            else:
                self._header_bytes += len(data)
            self._keep_line_head(data)
            if self._header_bytes > self.guard.max_header_bytes:
                self._refuse_headers()
            elif self._timer is None:
                self._timer = self.loop.call_later(self.guard.header_timeout, self._headers_late)
        elif phase == _BODY:
            now = self.loop.time()
            self._last_read = now
            if self._timer is None:
                self._body_started = now
                self._timer = self.loop.call_later(self.guard.body_idle_timeout, self._body_late)

    def _parse_error(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _keep_line_head(self, data: bytes) -> None:
        """The first bytes of the header line being read, to name it if it grows too long."""
        end = data.rfind(b"\n")
        if end >= 0:
            self._line_head = data[end + 1 : end + 1 + _LINE_HEAD]
        elif len(self._line_head) < _LINE_HEAD:
            self._line_head += data[: _LINE_HEAD - len(self._line_head)]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        self._phase = _HEADERS
        self._header_bytes = 0
        self._line_head = b""

    def on_headers_complete(self) -> None:
        guard = self.guard
        # Only a request whose reads passed the cap can have headers beyond it: measure those.
        if self._header_bytes + self._chunk > guard.max_header_bytes:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > guard.max_header_bytes:
                self._refuse_headers(size)
                raise _HeadersTooLarge
        self._phase = _BODY
        self._cancel_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._cancel_timer()
        if self._closing:  # refused before its body ended: nothing more to read for it
            self.transport.close()
            return
        super().on_message_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and self.timeout_keep_alive_task is None
            and not self.pipeline
            and not self.transport.is_closing()
        ):  # answered before its body ended: uvicorn armed the keep-alive timer too early
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if self._over_cap:
            scope = cycle.scope
            if scope["path"] not in PROBE_PATHS or scope["method"] not in ("GET", "HEAD"):
                guard = self.guard
                reason = (
                    f"more than {guard.max_connections} connections are open; beyond them only"
                    " probes are answered"
                )
                self.metrics.refuse("connections")
                body = _error_body("service unavailable", "connection", reason)
                self._refuse(503, body, {"retry-after": str(guard.retry_after)})
                return
            cycle.keep_alive = False  # one probe, then the slot is free again
        super()._start_asgi_task(cycle, app)

    # ------------------------------------------------------------------ deadlines

    def _headers_late(self) -> None:
        self._timer = None
        if self._phase != _HEADERS or self._closing:
            return
        if self.headers is None:  # a new connection that sent nothing: nobody to answer
            self._closing = True
            self.metrics.refuse("header_timeout")
            self.transport.close()
            return
        reason = f"the request line and headers took more than {self.guard.header_timeout:g} s"
        self.metrics.refuse("header_timeout")
        self._refuse(408, _error_body("request timeout", "headers", reason))

    def _body_late(self) -> None:
        self._timer = None
        if self._phase != _BODY or self._closing:
            return
        guard = self.guard
        now = self.loop.time()
        total_until = self._body_started + guard.body_timeout
        if self.flow.read_paused and now < total_until:
            # The server is not reading (the app has not taken the bytes yet): not the client's
            # pause. The total deadline still holds, so no connection waits on it for ever.
            self._last_read = now
            due = min(now + guard.body_idle_timeout, total_until)
            self._timer = self.loop.call_at(due, self._body_late)
            return
        idle_until = self._last_read + guard.body_idle_timeout
        due = min(idle_until, total_until)
        if now < due:
            self._timer = self.loop.call_at(due, self._body_late)
            return
        if total_until <= idle_until:
            reason = f"the body took more than {guard.body_timeout:g} s"
        else:
            reason = f"no byte of the body for {guard.body_idle_timeout:g} s"
        self.metrics.refuse("body_timeout")
        self._refuse(408, _error_body("request timeout", "body", reason))

    # ------------------------------------------------------------------ refusals

    def _refuse_headers(self, size: int | None = None) -> None:
        limit = self.guard.max_header_bytes
        if size is not None:  # complete: name the largest field
            name, value = max(self.headers or [], key=lambda h: len(h[1]), default=(b"", b""))
            field = name.decode("latin-1")
            if len(self.url) > len(value):
                field = ""
            reason = f"the request line and headers are {size} bytes; at most {limit}"
        else:  # still arriving: the line being read is the long one
            seen = self._header_bytes
            head = self._line_head
            field = head.split(b":", 1)[0].strip().decode("latin-1") if b":" in head else ""
            if not self.headers and self.url and len(self.url) * 2 > seen:
                field = ""
            reason = f"more than {limit} bytes of request line and headers ({seen} received)"
        self.metrics.refuse("headers_too_large")
        if field:
            reason = f"{field!r} is too long: {reason}"
            body = _error_body("request header fields too large", field, reason)
            self._refuse(431, body)
        elif not self.headers or len(self.url) > limit // 2:
            self._refuse(414, _error_body("URI too long", "url", reason))
        else:
            self._refuse(431, _error_body("request header fields too large", "headers", reason))

    def _refuse(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` and close: at once if the request is all in, else after a linger."""
        self._closing = True
        self._cancel_timer()
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # an ASGI task still running sends nothing after this
            cycle.response_complete = True  # and the parser drops the rest of its body
            cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        if answered:  # its answer went out already (e.g. an early 413): only close
            transport.close()
            return
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        extra = {"content-type": "application/json", **(headers or {})}
        for key, text in extra.items():
            parts += (key.lower().encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n")
        parts += (b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body)
        transport.write(b"".join(parts))
        if self._phase == _IDLE:
            transport.close()
            return
        # Bytes of this request are still arriving: stop taking them, let the client read the
        # answer, and reset the connection after a while (a close with unread bytes resets it).
        transport.pause_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)


def guarded(base: type[GuardedHttpProtocol], settings: Settings, metrics: ServiceMetrics) -> type:
    """``base`` bound to the limits of ``settings``, counting refusals in ``metrics``."""
    return type(
        f"Bound{base.__name__}", (base,), {"guard": GuardLimits.of(settings), "metrics": metrics}
    )


def ensure_descriptors(settings: Settings) -> int:
    """Raise the soft limit on open files to what the connection cap needs (up to the hard limit),
    so that the cap, not the descriptors, is what runs out first; returns the soft limit. Below
    it (a hard limit too low), says by how much the cap should come down."""
    needed = settings.max_connections + settings.probe_connections + OTHER_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        if soft < needed:
            log.warning(
                "only %d file descriptors may be open: the connection cap (%d + %d for probes)"
                " needs %d; set TOPK_MAX_CONNECTIONS to at most %d",
                soft, settings.max_connections, settings.probe_connections, needed,
                max(1, soft - settings.probe_connections - OTHER_DESCRIPTORS),
            )  # fmt: skip
    return int(soft)
