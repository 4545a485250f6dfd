"""``python -m service --host 127.0.0.1 --port 8000``: one uvicorn process (one per device).

Configuration comes from ``TOPK_*`` environment variables; ``--host``/``--port``/``--log-level``
override them. On SIGINT/SIGTERM readiness turns false at once, then uvicorn stops accepting,
finishes in-flight requests (up to ``--graceful-timeout`` seconds) and the lifespan drains the queue.

``python -m service --prime`` builds the kernels a start-up needs (the covers, and the
``TOPK_WARMUP_*`` ones) into ``TOPK_COMPILATION_CACHE_DIR`` and exits, serving nothing: a Docker
image primed this way at build time starts warm.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from service.app import create_app
from service.ingress.asgi import TopKApp
from service.runtime import ServiceRuntime
from service.settings import Settings


def _http(app: TopKApp, settings: Settings) -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting: the protocol gate (imported only when it is on), or uvicorn's."""
    if settings.http_protocol == "uvicorn":
        return "auto"
    from service.ingress.protocol import http_protocol

    return http_protocol(app)


class DrainingServer(uvicorn.Server):
    """A uvicorn server that flips readiness to false before it starts shutting down."""

    def __init__(self, config: uvicorn.Config, runtime: ServiceRuntime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.runtime.begin_drain()
        super().handle_exit(sig, frame)


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
    settings = Settings.from_env(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The event loop holds the GIL most of the time under load; the device thread needs it only
    # for microseconds per batch but would wait up to the default 5 ms switch interval for it.
    if arguments.prime:
        asyncio.run(prime(settings))
        return
    sys.setswitchinterval(0.0005)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=arguments.access_log,
        lifespan="on",  # a failing start-up must stop the process, not be ignored
        timeout_graceful_shutdown=arguments.graceful_timeout,
        timeout_keep_alive=75,  # above common proxy idle timeouts (60 s), so no stray 502s
        http=_http(app, settings),
    )
    DrainingServer(config, app.state.runtime).run()


if __name__ == "__main__":
    main()
