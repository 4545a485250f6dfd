"""HTTP benchmark of the service: requests/s and p50/p99, batching on vs off vs a bare echo floor.

One run starts four servers in their own processes on free 127.0.0.1 ports (the service with
batching on, with batching off, a bare uvicorn app that echoes the request body, and the same echo
with every request parked on a future released in batches), drives each
with a small keep-alive HTTP/1.1 load generator (asyncio streams, no client library overhead) at
1, 16 and 64 concurrent clients for a small (1x64) and a batched (256x1024) payload as a
``/v1/topk`` JSON body, as an OIP inference request with JSON data and with binary tensor data
(the echoes get the same bytes), and as an OIP ``ModelInfer`` over gRPC with raw contents
(services only: ``grpc.aio`` clients sending pre-serialised messages, so that the client side
costs as little as the HTTP generator's), then runs an open-loop paced load at 80 % of the
measured saturation to check the tail. Results go to the ``## Service`` section of
bench/RESULTS.md (other sections are left untouched).

    python bench/service.py                 # full run (~5 minutes on 2 cores)
    python bench/service.py --duration 2    # quicker
    python bench/service.py --baseline f00d56f   # also the service as of that commit, side by side
    python bench/service.py --quick --duration 1  # smoke pass: echo vs service, small payload
    python bench/service.py --payloads 'OIP (JSON|binary)$|k=[28]$'  # some payloads (printed)

``--baseline REV`` checks REV out into a temporary git worktree (or takes REV as an existing
worktree's directory) and runs its service as a fifth target with the same settings, measured in
the same rounds as the others: a before/after comparison that the machine's load drift cannot bias.
``--payloads REGEX`` measures only the payloads whose label it matches (``re.search``); the report
then leaves out the rows and ratios it has no numbers for.

Ratios between payloads count only the 200 answers: a cell of big bodies at 64 clients is partly
answered by fast 503s from admission (the bodies' budget), which must not pass for speed. Beside
req/s, each ratio row gives the server's CPU time per request (its process's user + system time
during the cell, all threads, over the 200 answers): on a shared machine the req/s of cells
measured a minute apart drift with other work, the CPU a request costs much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
CONCURRENCY = (1, 16, 64)


# ------------------------------------------------------------------------------ echo server


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _send_json(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def echo_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The HTTP floor: read the whole body and send it back, nothing else."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await _send_json(send, await _read_body(receive))


_parked: list[tuple[asyncio.Future[bytes], bytes]] = []


def _release_parked() -> None:
    batch = _parked[:]
    _parked.clear()
    for future, body in batch:
        future.set_result(body)


async def parked_echo_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The floor of any dynamic batcher on this stack: the echo, but every request waits on its
    own future until a callback releases all waiting requests at once (no parsing, no device)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = await _read_body(receive)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()
    _parked.append((future, body))
    if len(_parked) == 1:
        loop.call_soon(_release_parked)
    await _send_json(send, await future)


def serve_echo(port: int, parked: bool = False) -> None:
    import uvicorn

    app = parked_echo_app if parked else echo_app
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Target:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    path: str
    grpc_port: int | None = None

    def cpu_seconds(self) -> float:
        """CPU time the target's process has used so far (all its threads; Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(
    name: str,
    batching: bool,
    cache: Path,
    root: Path = ROOT,
    grpc: bool = True,
    extra: dict[str, str] | None = None,
) -> Target:
    port = free_port()
    grpc_port = free_port() if grpc else None
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOPK_")},
        "PYTHONPATH": str(root),
        "TOPK_BATCHING": "true" if batching else "false",
        "TOPK_WARMUP_OPERATORS": "sparse",
        "TOPK_WARMUP_ROW_BUCKETS": "1,2,4,8,16,32,64,128,256",
        "TOPK_WARMUP_N_BUCKETS": "64,1024",
        "TOPK_COMPILATION_CACHE_DIR": str(cache),
        "TOPK_LOG_LEVEL": "warning",
        # A baseline older than gRPC would refuse the setting: it gets none.
        **({"TOPK_GRPC_PORT": str(grpc_port)} if grpc_port is not None else {}),
        **(extra or {}),
    }
    if root == ROOT:  # stop at once (no load balancer to warn); a baseline tree may not know it
        environment.setdefault("TOPK_DRAIN_DELAY_S", "0")
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=root, env=environment)
    return Target(name, process, port, "/v1/topk", grpc_port)


def baseline_tree(revision: str) -> Path:
    """A detached worktree of ``revision`` (made once, reused by later runs), or ``revision``
    itself when it is a worktree's directory."""
    if Path(revision).is_dir():
        return Path(revision)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = ROOT / ".jax_cache" / f"baseline-{commit}"
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True
        )
    return tree


def start_echo(parked: bool = False) -> Target:
    port = free_port()
    flag = "--serve-parked-echo" if parked else "--serve-echo"
    command = [sys.executable, str(Path(__file__).resolve()), flag, str(port)]
    name = "parked echo" if parked else "echo"
    return Target(name, subprocess.Popen(command, cwd=ROOT), port, "/echo")


async def wait_ready(target: Target, path: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    while True:
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name} not ready after {timeout} s")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
            writer.write(request)
            status, _ = await read_response(reader)
            writer.close()
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)


# ------------------------------------------------------------------------------ load generator


async def wait_settled(target: Target, timeout: float = 600.0) -> None:
    """Until the service builds no kernel in the background (``topk_kernels_pending`` 0): a cold
    shape is served by a cover while its own kernel compiles, and that compile (seconds of CPU on
    these 2 cores) would otherwise be measured as the service's speed. A server without the gauge
    (an older baseline) warms everything before it is ready."""
    deadline = time.monotonic() + timeout
    request = b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n"
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        writer.write(request)
        _, body = await read_response(reader)
        writer.close()
        pending = re.search(rb"(?m)^topk_kernels_pending ([0-9.e+]+)", body)
        if pending is None or float(pending.group(1)) == 0:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{target.name} still building kernels after {timeout} s")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return status, body


def http_request(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Measurement:
    requests: int
    errors: int
    seconds: float
    latencies: np.ndarray
    cpu_seconds: float = math.nan  # the server's CPU time during the cell (all its threads)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies, q) * 1000) if len(self.latencies) else float("nan")
        )


async def closed_loop(port: int, request: bytes, clients: int, duration: float) -> Measurement:
    """``clients`` connections, each sending its next request when the previous one is answered."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            status, _ = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            errors += status != 200
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Measurement(len(latencies), errors, time.perf_counter() - started, np.array(latencies))


async def open_loop(
    port: int, request: bytes, connections: int, rate: float, duration: float
) -> Measurement:
    """A paced load of ``rate`` requests/s; latency counts from the *scheduled* send time, so a
    stalled server shows up in the tail (no coordinated omission)."""
    latencies: list[float] = []
    errors = 0
    interval = connections / rate
    begin = time.perf_counter() + 0.05

    async def client(offset: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        scheduled = begin + offset
        while scheduled < begin + duration:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(request)
            status, _ = await read_response(reader)
            latencies.append(time.perf_counter() - scheduled)
            errors += status != 200
            scheduled += interval
        writer.close()

    await asyncio.gather(*(client(i * interval / connections) for i in range(connections)))
    return Measurement(len(latencies), errors, duration, np.array(latencies))


GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def grpc_request(x: np.ndarray, k: int) -> bytes:
    """``x`` as a serialised ``ModelInferRequest`` with raw contents, asking for the indices (as
    the HTTP binary request does)."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(
        model_name="topk",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)],
        parameters={"k": pb.InferParameter(int64_param=k)},
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="indices")],
        raw_input_contents=[x.astype("<f4").tobytes()],
    )
    return request.SerializeToString()


async def grpc_closed_loop(
    port: int, request: bytes, clients: int, duration: float, connections: int | None = None
) -> Measurement:
    """``clients`` concurrent callers, each calling again when answered, over one HTTP/2
    connection per 16 callers; bytes in, bytes out (no protobuf work on this side)."""
    import grpc

    options = [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
        ("grpc.use_local_subchannel_pool", 1),  # one connection per channel, not one shared
    ]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        for _ in range(connections or max(1, clients // 16))
    ]
    calls = [channel.unary_unary(GRPC_METHOD) for channel in channels]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def client(index: int) -> None:
        nonlocal errors
        call = calls[index % len(calls)]
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call(request, timeout=60)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        for channel in channels:
            await channel.close()
    return Measurement(len(latencies), errors, time.perf_counter() - started, np.array(latencies))


# ------------------------------------------------------------------------------ the run


OIP_BINARY = "batched 256x1024 k=8, OIP binary"
OIP_JSON = "batched 256x1024 k=8, OIP JSON"
OIP_SMALL_JSON = "small 1x64 k=2, OIP JSON"
OIP_SMALL_BINARY = "small 1x64 k=2, OIP binary"
OIP_PAYLOADS = (OIP_SMALL_JSON, OIP_SMALL_BINARY, OIP_JSON, OIP_BINARY)
GRPC_SMALL = "small 1x64 k=2, OIP gRPC"
GRPC_BATCHED = "batched 256x1024 k=8, OIP gRPC"
GRPC_PAYLOADS = (GRPC_SMALL, GRPC_BATCHED)


def payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    small = {"x": rng.normal(size=(1, 64)).round(4).tolist(), "k": 2}
    batched = {"x": rng.normal(size=(256, 1024)).round(4).tolist(), "k": 8}
    return {
        "small 1x64 k=2": json.dumps(small).encode(),
        "batched 256x1024 k=8": json.dumps(batched).encode(),
    }


def _numbers() -> tuple[np.ndarray, np.ndarray]:
    """The small and the batched payloads' numbers (the same draws as payloads())."""
    rng = np.random.default_rng(0)
    small = rng.normal(size=(1, 64)).round(4)
    return small, rng.normal(size=(256, 1024)).round(4)


def oip_request(path: str, x: np.ndarray, k: int, binary: bool) -> bytes:
    """``x`` as an OIP inference request, as JSON data or with the binary tensor data extension
    (raw float32 after the JSON header, the indices asked for as binary data too)."""
    tensor: dict[str, Any] = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    request: dict[str, Any] = {"parameters": {"k": k}, "inputs": [tensor]}
    blob = b""
    if binary:
        blob = x.astype("<f4").tobytes()
        tensor["parameters"] = {"binary_data_size": len(blob)}
        request["outputs"] = [{"name": "indices", "parameters": {"binary_data": True}}]
    else:
        tensor["data"] = x.ravel().tolist()
    header = json.dumps(request).encode()
    body = header + blob
    framing = f"Inference-Header-Content-Length: {len(header)}\r\n" if binary else ""
    kind = "application/octet-stream" if binary else "application/json"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {kind}\r\n{framing}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def request_for(target: Target, label: str, bodies: dict[str, bytes]) -> bytes:
    """``label``'s request to ``target``; the echoes get the same bytes at their own path."""
    if label in OIP_PAYLOADS:
        path = "/v2/models/topk/infer" if target.path == "/v1/topk" else target.path
        small, batched = _numbers()
        x, k = (batched, 8) if label.startswith("batched") else (small, 2)
        return oip_request(path, x, k, binary=label not in (OIP_SMALL_JSON, OIP_JSON))
    if label in GRPC_PAYLOADS:
        small, batched = _numbers()
        return grpc_request(batched, 8) if label == GRPC_BATCHED else grpc_request(small, 2)
    return http_request(target.path, bodies[label])


async def measure(
    target: Target, label: str, request: bytes, clients: int, duration: float
) -> Measurement | None:
    """One closed-loop cell (None: the target does not speak the payload's protocol)."""
    if label in GRPC_PAYLOADS:
        if target.grpc_port is None:
            return None
        return await grpc_closed_loop(target.grpc_port, request, clients, duration)
    return await closed_loop(target.port, request, clients, duration)


async def run_quick(duration: float, clients_list: tuple[int, ...]) -> list[dict[str, Any]]:
    """``--quick``: the echo and the service (batching on), the small payload, a few client
    counts: a smoke pass for bench/gpu_check.sh (the service on this machine's device). The
    caller's ``TOPK_*`` settings reach the service (gpu_check.sh's dry run: a small cover), and
    its compilation cache, if set, is used instead of .jax_cache/bench."""
    given = {k: v for k, v in os.environ.items() if k.startswith("TOPK_")}
    for axis in ("ROW", "N"):  # warm-up buckets must be buckets: the caller's, unless it says
        if f"TOPK_{axis}_BUCKETS" in given:
            given.setdefault(f"TOPK_WARMUP_{axis}_BUCKETS", given[f"TOPK_{axis}_BUCKETS"])
    cache = Path(given.get("TOPK_COMPILATION_CACHE_DIR") or ROOT / ".jax_cache" / "bench")
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    label = "small 1x64 k=2"
    body = payloads()[label]
    rows: list[dict[str, Any]] = []
    targets = [start_echo()]
    try:
        await wait_ready(targets[0], "/")
        targets.append(start_service("batching on", True, cache, grpc=False, extra=given))
        await wait_ready(targets[1], "/readyz")
        await closed_loop(targets[1].port, http_request(targets[1].path, body), 4, 0.5)
        for clients in clients_list:
            for target in targets:
                request = http_request(target.path, body)
                m = await closed_loop(target.port, request, clients, duration)
                rows.append(row(target.name, label, clients, m))
                print(rows[-1], flush=True)
    finally:
        for target in targets:
            target.stop()
    return rows


def quick_report(rows: list[dict[str, Any]], duration: float) -> str:
    lines = [
        f"`python bench/service.py --quick --duration {duration:g}`: {os.cpu_count()} CPUs, the"
        f" service's JAX backend in its log; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| payload | clients | echo req/s | service req/s | p50 ms | p99 ms | non-200 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for on in (r for r in rows if r["target"] == "batching on"):
        echo = next(r for r in rows if r["target"] == "echo" and r["clients"] == on["clients"])
        lines.append(
            f"| {on['payload']} | {on['clients']} | {echo['rps']:.0f} | {on['rps']:.0f} | "
            f"{on['p50_ms']:.1f} | {on['p99_ms']:.1f} | {on['errors']} |"
        )
    return "\n".join(lines)


async def run(
    duration: float, baseline: str | None = None, selected: str = ""
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All four servers run at once and every cell is measured back to back on all four, so
    that a drift in the machine's load (it is shared) biases no target against another."""
    cache = ROOT / ".jax_cache" / "bench"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    bodies = payloads()
    targets: list[Target] = []
    try:
        for parked in (False, True):
            targets.append(start_echo(parked))
            await wait_ready(targets[-1], "/")
        for name, batching in (("batching on", True), ("batching off", False)):
            # One after the other: the second start loads the first one's kernels from the cache.
            targets.append(start_service(name, batching, cache))
            await wait_ready(targets[-1], "/readyz")
        if baseline is not None:
            tree = baseline_tree(baseline)
            revision = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            name = f"baseline {revision}"
            grpc = (tree / "service" / "ingress" / "grpc_gate.py").exists()
            targets.append(start_service(name, True, cache / "baseline", tree, grpc=grpc))
            await wait_ready(targets[-1], "/readyz")
        labels = [*bodies, *OIP_PAYLOADS, *GRPC_PAYLOADS]
        for label in [label for label in labels if re.search(selected, label)]:
            for target in targets[2:]:  # first-touch effects out of the way
                await measure(target, label, request_for(target, label, bodies), 4, 1.0)
            for target in targets[2:]:  # and the exact kernels they asked for built
                await wait_settled(target)
            for clients in CONCURRENCY:
                for target in targets:
                    request = request_for(target, label, bodies)
                    cpu = target.cpu_seconds()
                    m = await measure(target, label, request, clients, duration)
                    if m is not None:
                        m.cpu_seconds = target.cpu_seconds() - cpu
                        rows.append(row(target.name, label, clients, m))
                        print(rows[-1], flush=True)
        on = targets[2]
        small = http_request(on.path, bodies["small 1x64 k=2"])
        saturation = max(
            (r["rps"] for r in rows if r["target"] == on.name and r["payload"].startswith("small")),
            default=0.0,
        )
        paced: dict[str, Any] = {}
        if any(r["payload"] == "small 1x64 k=2" for r in rows):  # not with a --payloads subset
            rate = 0.8 * saturation
            m = await open_loop(on.port, small, 64, rate, max(duration, 5.0))
            paced = {
                "rate": rate,
                "saturation": saturation,
                **row(on.name, "small 1x64 k=2", 64, m),
            }
            print("paced", paced, flush=True)
    finally:
        for target in targets:
            target.stop()
    return rows, paced


def row(target: str, payload: str, clients: int, m: Measurement) -> dict[str, Any]:
    return {
        "target": target, "payload": payload, "clients": clients, "requests": m.requests,
        "errors": m.errors, "rps": m.rps, "p50_ms": m.percentile(50), "p99_ms": m.percentile(99),
        "ok_rps": (m.requests - m.errors) / m.seconds,
        "cpu_us": m.cpu_seconds / max(m.requests - m.errors, 1) * 1e6,  # per 200 answer
    }  # fmt: skip


def report(rows: list[dict[str, Any]], paced: dict[str, Any], duration: float) -> str:
    def find(target: str, payload: str, clients: int) -> dict[str, Any]:
        return next(
            r
            for r in rows
            if (r["target"], r["payload"], r["clients"]) == (target, payload, clients)
        )

    def rps(target: str, payload: str, clients: int) -> str:
        """The cell's req/s, or a dash where the target does not speak the protocol (gRPC)."""
        found = [r for r in rows if (r["target"], r["payload"], r["clients"]) == (target, payload, clients)]  # fmt: skip
        return f"{found[0]['rps']:.0f}" if found else "—"

    baseline = next((r["target"] for r in rows if r["target"].startswith("baseline")), None)
    extra_head = f" {baseline} req/s | p50 | p99 |" if baseline else ""
    lines = [
        "## Service",
        "",
        f"`python bench/service.py --duration {duration:g}"
        f"{' --baseline ' + baseline.split()[-1] if baseline else ''}` on {platform.machine()}, "
        f"{os.cpu_count()} CPUs shared by server and load generator, CPU JAX, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Closed-loop "
        "keep-alive clients; latencies in ms; `echo` is a bare uvicorn app returning the body; "
        "`parked echo` is the same echo with every request parked on its own future until one "
        "callback releases all waiting requests (the floor of any dynamic batcher on this stack)"
        + (
            f"; `{baseline}` is the service as of that commit, measured in the same rounds."
            if baseline
            else "."
        ),
        "",
        "| payload | clients | echo req/s | parked echo req/s | batching on req/s | p50 | p99 "
        "| batching off req/s | p50 | p99 |" + extra_head,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|---:|" if baseline else ""),
    ]
    for payload in dict.fromkeys(r["payload"] for r in rows):
        for clients in CONCURRENCY:
            on = find("batching on", payload, clients)
            off = find("batching off", payload, clients)
            echo, parked = rps("echo", payload, clients), rps("parked echo", payload, clients)
            line = (
                f"| {payload} | {clients} | {echo} | {parked} | {on['rps']:.0f} | "
                f"{on['p50_ms']:.1f} | "
                f"{on['p99_ms']:.1f} | {off['rps']:.0f} | {off['p50_ms']:.1f} | {off['p99_ms']:.1f} |"
            )
            if baseline:
                found = [r for r in rows if (r["target"], r["payload"], r["clients"]) == (baseline, payload, clients)]  # fmt: skip
                line += (
                    f" {found[0]['rps']:.0f} | {found[0]['p50_ms']:.1f} | {found[0]['p99_ms']:.1f} |"
                    if found
                    else " — | — | — |"
                )
            lines.append(line)

    def measured(payload: str, clients: int = 64) -> bool:
        return any(r["payload"] == payload and r["clients"] == clients for r in rows)

    def ok_ratio(label: str, other: str, clients: int = 64) -> str:
        """req/s of 200 answers, ``label`` over ``other`` (batching on)."""
        ok, base = find("batching on", label, clients), find("batching on", other, clients)
        return f"{ok['ok_rps'] / base['ok_rps']:.0%}" if base["ok_rps"] else "—"

    small = "small 1x64 k=2"
    batched = "batched 256x1024 k=8"
    pairs = [(label, small, f"{small} (/v1/topk)") for label in (OIP_SMALL_JSON, OIP_SMALL_BINARY)]
    pairs += [(OIP_SMALL_BINARY, OIP_SMALL_JSON, OIP_SMALL_JSON)]
    pairs += [(label, batched, f"{batched} (/v1/topk JSON)") for label in (OIP_JSON, OIP_BINARY, GRPC_BATCHED)]  # fmt: skip
    pairs += [(OIP_BINARY, OIP_JSON, OIP_JSON)]
    lines += [
        "",
        "| ratio (batching on, 64 clients) | req/s (200 answers only) | server CPU per request |",
        "|---|---:|---:|",
    ]
    for label, other, named in pairs:
        if measured(label) and measured(other):
            cpu = find("batching on", label, 64)["cpu_us"], find("batching on", other, 64)["cpu_us"]
            lines.append(
                f"| {label} ÷ {named} | {ok_ratio(label, other)} | "
                f"{cpu[0]:.0f} ÷ {cpu[1]:.0f} µs = {cpu[0] / cpu[1]:.0%} |"
            )
    for grpc_label, http_label in ((GRPC_SMALL, OIP_SMALL_BINARY), (GRPC_BATCHED, OIP_BINARY)):
        for clients in (1, 64):
            if measured(grpc_label, clients) and measured(http_label, clients):
                ratio = ok_ratio(grpc_label, http_label, clients)
                lines.append(f"| {grpc_label} ÷ {http_label}, {clients} client(s) | {ratio} |")
    if baseline:
        for payload in dict.fromkeys(r["payload"] for r in rows):
            found = [r for r in rows if (r["target"], r["payload"], r["clients"]) == (baseline, payload, 64)]  # fmt: skip
            if not found:
                continue
            now, then = find("batching on", payload, 64), found[0]
            lines.append(
                f"| {payload}: this tree ÷ {baseline} | {now['ok_rps'] / then['ok_rps']:.0%} "
                f"(p50 {now['p50_ms']:.1f} vs {then['p50_ms']:.1f} ms) |"
                if then["ok_rps"]
                else f"| {payload}: this tree ÷ {baseline} | — |"
            )
    non_200 = [
        f"{r['target']}, {r['payload']}, {r['clients']} clients: {r['errors']}"
        for r in rows
        if r["errors"]
    ]
    if not measured(small) or not paced:
        lines += ["", f"Non-200 answers: {'; '.join(non_200) or 'none'}.", ""]
        return "\n".join(lines)
    errors = sum(r["errors"] for r in rows) + paced.get("errors", 0)
    best_echo = max(find("echo", small, c)["rps"] for c in CONCURRENCY)
    best_on = max(find("batching on", small, c)["rps"] for c in CONCURRENCY)
    speedup = find("batching on", small, 64)["rps"] / find("batching off", small, 64)["rps"]
    tail = paced["p99_ms"] / paced["p50_ms"]
    lines += [
        "",
        "| target | measured | goal | met |",
        "|---|---:|---:|:---:|",
        f"| small requests vs echo (best of each) | {best_on / best_echo:.0%} | ≥ 60 % | "
        f"{'yes' if best_on >= 0.6 * best_echo else 'no'} |",
        f"| batching on / off, small, 64 clients | {speedup:.1f}× | ≥ 5× | {'yes' if speedup >= 5 else 'no'} |",
        f"| p99 / p50 at 80 % of saturation ({paced['rate']:.0f} req/s paced, small) | "
        f"{tail:.1f}× (p50 {paced['p50_ms']:.1f}, p99 {paced['p99_ms']:.1f}) | ≤ 3× | {'yes' if tail <= 3 else 'no'} |",
        "",
        f"Non-200 answers during the run: {errors} ({'; '.join(non_200) or 'none'}).",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replace (or append) only the ``## Service`` section of bench/RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Service\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-parked-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    parser.add_argument(
        "--baseline", metavar="REV", help="also run the service as of REV (or a worktree's path)"
    )
    parser.add_argument(
        "--payloads",
        metavar="REGEX",
        default="",
        help="only the payloads whose label matches (printed, never written to RESULTS.md)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="echo vs service, small payload only (never writes)"
    )
    parser.add_argument("--clients", default="1,16", help="client counts of --quick")
    arguments = parser.parse_args()
    if arguments.serve_echo or arguments.serve_parked_echo:
        serve_echo(
            arguments.serve_echo or arguments.serve_parked_echo,
            parked=bool(arguments.serve_parked_echo),
        )
        return
    if arguments.quick:
        clients_list = tuple(int(c) for c in arguments.clients.split(","))
        quick_rows = asyncio.run(run_quick(arguments.duration, clients_list))
        print(quick_report(quick_rows, arguments.duration))
        failed = any(r["errors"] or not r["requests"] for r in quick_rows)
        sys.exit(1 if failed else 0)
    rows, paced = asyncio.run(run(arguments.duration, arguments.baseline, arguments.payloads))
    section = report(rows, paced, arguments.duration)
    print(section)
    if not arguments.no_write and not arguments.payloads:  # the table is whole, or not written
        write_section(section)


if __name__ == "__main__":
    main()
