"""Capacity of one replica, for sizing a deployment: requests/s, latency, the server's CPU (in
cores, all its threads), its memory and its queue depth, per payload, on this machine.

One ``python -m service`` with the default settings (those of deploy/kubernetes), driven by the
closed-loop keep-alive load generator of bench/service.py at a fixed number of clients per
payload, then by a paced load at 80 % of the small-request saturation (the operating point the
autoscaler should hold). The server's CPU comes from /proc (utime + stime of the process), its
queue depth from the ``topk_queued_requests`` gauge sampled every 0.25 s. Prints a Markdown
table for deploy/README.md ("Capacity planning").

    python bench/capacity.py                   # ~2 minutes with a warm cache, +2 cold
    python bench/capacity.py --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_service", ROOT / "bench" / "service.py")
assert _spec is not None and _spec.loader is not None
load = importlib.util.module_from_spec(_spec)  # bench/service.py: load generator and payloads
sys.modules[_spec.name] = load  # its dataclasses look their module up
_spec.loader.exec_module(load)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


async def queue_depth(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    _, body = await load.read_response(reader)
    writer.close()
    match = re.search(rb"^topk_queued_requests (\S+)$", body, flags=re.M)
    return float(match.group(1)) if match else float("nan")


async def observed(target: Any, work: Any) -> dict[str, Any]:
    """Run ``work`` while sampling the server's queue depth and RSS; CPU over the whole run."""
    pid = target.process.pid
    depths: list[float] = []
    peak = rss_mib(pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            depths.append(await queue_depth(target.port))
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    cpu, wall = cpu_seconds(pid), time.perf_counter()
    measurement = await work
    cpu, wall = cpu_seconds(pid) - cpu, time.perf_counter() - wall
    done.set()
    await sampler
    return {
        "rps": measurement.rps,
        "p50_ms": measurement.percentile(50),
        "p99_ms": measurement.percentile(99),
        "errors": measurement.errors,
        "cores": cpu / wall,
        "cpu_ms_per_request": 1000 * cpu / max(measurement.requests, 1),
        "rss_peak_mib": peak,
        "queue_mean": float(np.mean(depths)) if depths else float("nan"),
        "queue_max": max(depths, default=float("nan")),
    }


def start(cache: Path) -> Any:
    port = load.free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOPK_")},
        "PYTHONPATH": str(ROOT),
        "TOPK_COMPILATION_CACHE_DIR": str(cache),
        "TOPK_LOG_LEVEL": "warning",
        "TOPK_GRPC_PORT": "",  # HTTP only: no gRPC port to collide with another server's
    }
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    process = load.subprocess.Popen(command, cwd=ROOT, env=environment)
    return load.Target("service", process, port, "/v1/topk")


async def run(duration: float, cache: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    bodies = load.payloads()
    cases = [
        ("small 1x64 k=2, JSON", load.http_request("/v1/topk", bodies["small 1x64 k=2"]), 64),
        ("256x1024 k=8, JSON", load.http_request("/v1/topk", bodies["batched 256x1024 k=8"]), 16),
        ("256x1024 k=8, OIP binary", load.oip_binary_request("/v2/models/topk/infer"), 16),
    ]
    target = start(cache)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        await load.wait_ready(target, "/readyz")
        ready_s = time.perf_counter() - started
        idle = {"ready_s": ready_s, "rss_idle_mib": rss_mib(target.process.pid)}
        for label, request, clients in cases:
            await load.closed_loop(target.port, request, 4, 1.0)  # first touch out of the way
            work = load.closed_loop(target.port, request, clients, duration)
            rows.append(
                {"payload": label, "load": f"{clients} clients", **await observed(target, work)}
            )
            print(rows[-1], flush=True)
        small = rows[0]
        rate = 0.8 * small["rps"]
        work = load.open_loop(target.port, cases[0][1], 64, rate, duration)
        rows.append(
            {
                "payload": cases[0][0],
                "load": f"paced {rate:.0f}/s (80 %)",
                **await observed(target, work),
            }
        )
        print(rows[-1], flush=True)
        idle["rss_after_mib"] = rss_mib(target.process.pid)
    finally:
        target.stop()
    return rows, idle


def table(rows: list[dict[str, Any]], idle: dict[str, float], duration: float) -> str:
    lines = [
        f"`python bench/capacity.py --duration {duration:g}`, {platform.machine()}, "
        f"{os.cpu_count()} CPUs shared by the server and the load generator, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"{os.getloadavg()[0]:.1f} at the end. Ready {idle['ready_s']:.0f} s after start; RSS "
        f"{idle['rss_idle_mib']:.0f} MiB when ready, {idle['rss_after_mib']:.0f} MiB after the run.",
        "",
        "| payload | load | req/s | p50 ms | p99 ms | server cores | CPU ms/request | peak RSS MiB "
        "| queue depth mean / max | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['payload']} | {r['load']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['cores']:.2f} | {r['cpu_ms_per_request']:.3f} | {r['rss_peak_mib']:.0f} "
            f"| {r['queue_mean']:.1f} / {r['queue_max']:.0f} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--cache", type=Path, default=ROOT / ".jax_cache" / "capacity", help="compilation cache"
    )
    arguments = parser.parse_args()
    arguments.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    rows, idle = asyncio.run(run(arguments.duration, arguments.cache))
    print(table(rows, idle, arguments.duration))


if __name__ == "__main__":
    main()
