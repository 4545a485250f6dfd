"""``python -m service --host 127.0.0.1 --port 8000``: one uvicorn process (one per device).

Configuration comes from ``TOPK_*`` environment variables; ``--host``/``--port``/``--log-level``
override them. On SIGINT/SIGTERM readiness turns false at once, then uvicorn stops accepting,
finishes in-flight requests (up to ``--graceful-timeout`` seconds) and the lifespan stops gRPC
(``TOPK_GRPC_PORT``, served by the same process on the same event loop) and drains the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
        "--print-openapi",
        action="store_true",
        help="print the OpenAPI document of these settings and exit (make openapi)",
    )
    return parser.parse_args(argv)


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
    if arguments.print_openapi:
        document = create_app(settings).openapi()
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The event loop holds the GIL most of the time under load; the device thread needs it only
    # for microseconds per batch but would wait up to the default 5 ms switch interval for it.
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
