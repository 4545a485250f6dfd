"""A real uvicorn server on a free 127.0.0.1 port, in a thread of the test process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from service import Settings, create_app
from service.ingress.protocol import http_protocol
from service.runtime import ServiceRuntime

# One small cover (every variant at 8x64) serves every request these limits allow; the test
# servers of one process share its compilation (JAX's in-memory caches), so only the first one
# waits for it. Nothing compiles in the background unless a test turns compile_on_demand on.
SMALL = {
    "row_buckets": (1, 2, 4, 8),
    "n_buckets": (16, 32, 64),
    "max_rows": 8,
    "max_n": 64,
    "max_k": 64,
    "max_entries": 512,
    "max_batch_rows": 8,
    "cover_buckets": ("8x64",),
    "compile_on_demand": False,
    "compilation_cache_dir": "",
    "grpc_port": None,  # off: gRPC tests ask for it with grpc_port=0 (any free port)
}


# One warm kernel (sparse, 1 × 16): for servers whose tests send few inference requests; the
# other buckets compile on demand, at their first request.
QUICK_START: dict[str, object] = {
    "warmup_operators": ("sparse",),
    "warmup_row_buckets": (1,),
    "warmup_n_buckets": (16,),
}


def small_settings(**overrides: object) -> Settings:
    return Settings.from_env({}, **{**SMALL, **overrides})


class ServerThread:
    """``with ServerThread(settings) as server:`` serves at ``server.url`` until the block ends."""

    def __init__(self, settings: Settings, wait_ready: bool = True) -> None:
        self.app = create_app(settings)
        self.runtime: ServiceRuntime = self.app.state.runtime
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_url = ""  # 127.0.0.1:<port> once started with grpc_port set
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
            http=http_protocol(self.app),
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="uvicorn-test", daemon=True)
        self._wait_ready = wait_ready

    def _serve(self) -> None:
        asyncio.run(self.server.serve(sockets=[self._socket]))

    def __enter__(self) -> ServerThread:
        self._thread.start()
        # A hang guard, not a speed check: the first server of a test process compiles its cover
        # (~40 CPU-s), on a core that the other pytest worker and its servers share.
        deadline = time.monotonic() + 600
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        if self.app.state.grpc_port is not None:
            self.grpc_url = f"127.0.0.1:{self.app.state.grpc_port}"
        while self._wait_ready and not self.runtime.ready:
            if time.monotonic() > deadline or self.runtime.state == "failed":
                raise RuntimeError(f"the test server did not get ready: {self.runtime.failure}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=60)
        with contextlib.suppress(OSError):
            self._socket.close()


@contextlib.contextmanager
def serving(**overrides: object) -> Iterator[ServerThread]:
    """A test server as ``python -m service`` runs it, connection guard included
    (``http_protocol="uvicorn"``: every request through the ASGI gate)."""
    with ServerThread(small_settings(**overrides)) as server:
        yield server


def metric(server: ServerThread, sample: str) -> float:
    """The value of one sample of ``/metrics`` (0 if it is not there yet)."""
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0
