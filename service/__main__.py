"""``python -m service --host 127.0.0.1 --port 8000``: one uvicorn process (one per device).

Configuration comes from ``TOPK_*`` environment variables; ``--host``/``--port``/``--log-level``
override them. Every connection goes through the connection guard (service/ingress/guard.py).

Stopping, as a load balancer needs it (Kubernetes: endpoints are removed while the pod is told to
stop, and proxies learn it late): on SIGTERM readiness turns false at once while the server keeps
serving for ``TOPK_DRAIN_DELAY_S`` seconds; then uvicorn stops accepting, closes idle connections
and finishes every request it has received (up to ``--graceful-timeout`` seconds), the lifespan
stops gRPC (``TOPK_GRPC_PORT``, same process, same event loop) and drains the batcher's queue, and the process exits 0. SIGINT (Ctrl-C), or a second signal, skips
the delay.

``python -m service --prime`` builds the kernels a start-up needs (the covers, and the
``TOPK_WARMUP_*`` ones) into ``TOPK_COMPILATION_CACHE_DIR`` and exits, serving nothing: a Docker
image primed this way at build time starts warm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from service.app import create_app
from service.ingress.guard import ensure_descriptors
from service.ingress.protocol import http_protocol
from service.runtime import ServiceRuntime
from service.settings import Settings


class DrainingServer(uvicorn.Server):
    """A uvicorn server that turns readiness false, keeps serving ``delay`` seconds after a
    SIGTERM, and only then shuts down."""

    def __init__(self, config: uvicorn.Config, runtime: ServiceRuntime, delay: float) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.delay = delay
        self._stop_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.runtime.begin_drain()
        if sig == signal.SIGTERM and self.delay > 0 and self._stop_at is None:
            # Still serving: main_loop's tick (every 0.1 s) stops the server when the time comes.
            self._captured_signals.append(sig)
            self._stop_at = time.monotonic() + self.delay
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


def _exit_cleanly(_sig: int, _frame: FrameType | None) -> None:
    """SIGTERM's handler outside uvicorn's: uvicorn re-raises the signal it caught once it has
    drained, into this handler, so a drained server exits 0 (not 143); before uvicorn runs, it
    stops the process the same way."""
    raise SystemExit(0)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="address to bind (TOPK_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port to bind, 0 for any (TOPK_PORT, default 8000)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--graceful-timeout", type=float, default=20.0, help="seconds to drain")
    parser.add_argument(
        "--print-openapi",
        action="store_true",
        help="print the OpenAPI document of these settings and exit (make openapi)",
    )
    parser.add_argument(
        "--prime",
        action="store_true",
        help="build the start-up kernels into TOPK_COMPILATION_CACHE_DIR, then exit",
    )
    return parser.parse_args(argv)


async def prime(settings: Settings) -> None:
    """Build (or load) every kernel a start-up with ``settings`` builds, store them, and stop."""
    if not settings.compilation_cache_dir:
        raise SystemExit("--prime needs TOPK_COMPILATION_CACHE_DIR")
    runtime = ServiceRuntime(settings)
    await runtime.start()
    try:
        await runtime.wait_ready()
        if runtime.state != "ready":
            raise SystemExit(f"priming failed: {runtime.failure}")
        while runtime.engine.pending:  # the TOPK_WARMUP_* kernels, built after the covers
            await asyncio.sleep(0.1)
    finally:
        await runtime.stop()
    logging.getLogger(__name__).info(
        "primed %d kernels in %s", len(runtime.engine.kernels), settings.compilation_cache_dir
    )


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("host", arguments.host),
            ("port", arguments.port),
            ("log_level", arguments.log_level),
        )
        if value is not None
    }
    signal.signal(signal.SIGTERM, _exit_cleanly)
    settings = Settings.from_env(**overrides)
    if arguments.print_openapi:
        document = create_app(settings).openapi()
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if arguments.prime:
        asyncio.run(prime(settings))
        return
    # The event loop holds the GIL most of the time under load; the device thread needs it only
    # for microseconds per batch but would wait up to the default 5 ms switch interval for it.
    sys.setswitchinterval(0.0005)
    ensure_descriptors(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=arguments.access_log,
        lifespan="on",  # a failing start-up must stop the process, not be ignored
        timeout_graceful_shutdown=arguments.graceful_timeout,
        # Above proxies' idle timeouts (no stray 502s); uvicorn types it int, call_later takes any.
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        http=http_protocol(app),
    )
    DrainingServer(config, app.runtime, settings.drain_delay_s).run()


if __name__ == "__main__":
    main()
