"""Where a small request's time goes: the service against echo floors built from its own parts.

``bench/service.py`` compares the service with a bare uvicorn echo (an ASGI app). This run asks
how far each layer of the service's own request path lets it get, on the same machine in one
run (64 keep-alive clients, the small 1x64 k=2 body):

- ``asgi echo``: the bare uvicorn ASGI app that returns the body (the issue's floor);
- ``protocol echo``: the service's HTTP protocol gate (service/ingress/protocol.py) answering
  every ``POST /v1/topk`` with its own body, the app never called: the floor of our HTTP layer;
- ``protocol + reader``: the same, but the body is read by the ``/v1`` reader first (orjson, type
  and range checks, the work unit), no batching, no device: what reading the JSON costs;
- ``service``: the real thing, one process (what ``make run`` starts);
- ``service x2``: two service processes sharing the port (SO_REUSEPORT), each with its own
  engine: what a second process buys when the event loop is the bottleneck.

Each is reported as requests/s and as a fraction of the ASGI echo, with the server's CPU time
per request (all its threads, from /proc). Nothing is written to RESULTS.md; copy what matters.

    python bench/service_floor.py --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service import (  # noqa: E402 — the bench's own load generator and echo
    Target,
    closed_loop,
    free_port,
    http_request,
    payloads,
    start_echo,
    wait_ready,
)

MODES = ("protocol-echo", "protocol-reader", "service")
CLIENTS = 64


def serve(mode: str, port: int, own_port: int) -> None:
    """One server process of ``mode`` on ``port`` (shared, SO_REUSEPORT) and ``own_port``."""
    import uvicorn

    from service.app import create_app
    from service.ingress.gate import Reply
    from service.ingress.protocol import TopKHttpProtocol, http_protocol
    from service.settings import Settings

    settings = Settings.from_env()
    app = create_app(settings)
    protocol = http_protocol(app)
    assert isinstance(protocol, type) and issubclass(protocol, TopKHttpProtocol)

    if mode != "service":
        read = mode == "protocol-reader"

        def echo(self: Any, cycle: Any, endpoint: Any, headers: Any) -> None:
            body = bytes(cycle.body)
            if read:
                endpoint.decode(headers, body)
            self._respond(cycle, Reply(200, body, {"content-type": "application/json"}))

        protocol = type("EchoProtocol", (protocol,), {"_serve": echo})
    sockets = []
    for number in (port, own_port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", number))
        sockets.append(sock)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", http=protocol
    )
    sys.setswitchinterval(0.0005)  # as python -m service does
    uvicorn.Server(config).run(sockets=sockets)


def start(mode: str, port: int, own_port: int, cache: Path) -> subprocess.Popen[bytes]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOPK_")},
        "PYTHONPATH": str(ROOT),
        "TOPK_WARMUP_OPERATORS": "sparse",
        "TOPK_WARMUP_ROW_BUCKETS": "1,2,4,8,16,32,64,128,256",
        "TOPK_WARMUP_N_BUCKETS": "64",
        "TOPK_COMPILATION_CACHE_DIR": str(cache),
        "TOPK_LOG_LEVEL": "warning",
    }
    command = [sys.executable, __file__, "--serve", mode, str(port), str(own_port)]
    return subprocess.Popen(command, cwd=ROOT, env=environment)


def cpu_seconds(processes: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for process in processes:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def measure(duration: float) -> list[tuple[str, float, float]]:
    cache = ROOT / ".jax_cache" / "bench"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = payloads()["small 1x64 k=2"]
    setups: list[tuple[str, list[subprocess.Popen[bytes]], int, str]] = []
    try:
        echo = start_echo()
        setups.append(("asgi echo", [echo.process], echo.port, echo.path))
        for name, mode, count in (
            ("protocol echo", "protocol-echo", 1),
            ("protocol + reader", "protocol-reader", 1),
            ("service", "service", 1),
            ("service x2", "service", 2),
        ):
            port = free_port()
            # One after the other: later starts load the first one's kernels from the cache.
            processes = []
            for _ in range(count):  # each is awaited on its own port
                own_port = free_port()
                processes.append(start(mode, port, own_port, cache))
                await wait_ready(Target(name, processes[-1], own_port, "/"), "/readyz")
            setups.append((name, processes, port, "/v1/topk"))
        await wait_ready(Target("asgi echo", echo.process, echo.port, "/"), "/")
        rows = []
        for name, processes, port, path in setups:
            request = http_request(path, body)
            await closed_loop(port, request, 8, 1.0)  # first-touch effects out of the way
            started = cpu_seconds(processes)
            m = await closed_loop(port, request, CLIENTS, duration)
            cpu = (cpu_seconds(processes) - started) / m.requests * 1e6
            rows.append((name, m.rps, cpu))
            print(f"{name}: {m.rps:.0f} req/s, {cpu:.1f} us CPU/request, {m.errors} errors")
        return rows
    finally:
        for _, processes, _, _ in setups:
            for process in processes:
                process.terminate()
        for _, processes, _, _ in setups:
            for process in processes:
                process.wait(timeout=30)


def report(rows: list[tuple[str, float, float]], duration: float) -> str:
    floor = rows[0][1]
    lines = [
        f"{CLIENTS} closed-loop clients, small 1x64 k=2, {duration:g} s each, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| server | req/s | vs asgi echo | server CPU µs/request |",
        "|---|---:|---:|---:|",
    ]
    for name, rps, cpu in rows:
        lines.append(f"| {name} | {rps:.0f} | {rps / floor:.0%} | {cpu:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--serve", nargs=3, metavar=("MODE", "PORT", "OWN_PORT"), help=argparse.SUPPRESS
    )
    arguments = parser.parse_args()
    if arguments.serve:
        mode, port, own_port = arguments.serve
        if mode not in MODES:
            parser.error(f"--serve takes one of {MODES}")
        serve(mode, int(port), int(own_port))
        return
    rows = asyncio.run(measure(arguments.duration))
    print(report(rows, arguments.duration))


if __name__ == "__main__":
    main()
