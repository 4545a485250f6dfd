"""Big and small requests together: does the small traffic keep its throughput and its tail?

The scenario of issue 15: 64 closed-loop clients sending 256 × 1024 ``/v1/topk`` JSON bodies
(each a full batch, ~2 MB) beside 256 closed-loop clients sending 1 × 64 requests. Small-request
throughput and p50/p99 are measured alone, then in the mix; the big clients honour ``Retry-After``
on a 503 (as a well-behaved client does) and the latency of those 503s is measured too, and so is
the time a probe in a process of its own waits for the 503 of a big request's headers. With
``--baseline REV`` the service as of REV (a ``git archive`` of it, no worktree) runs beside this
tree and every phase is measured on both, back to back, so that the shared machine's load drift
biases neither. Results go to the ``## Service: big and small requests together`` section of
bench/RESULTS.md.

    python bench/mixed.py --duration 8 --rounds 3 --baseline 25c95a2
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_service", ROOT / "bench" / "service.py")
assert _spec is not None and _spec.loader is not None
load = importlib.util.module_from_spec(_spec)  # bench/service.py: servers and the HTTP helpers
sys.modules[_spec.name] = load
_spec.loader.exec_module(load)

SECTION = "## Service: big and small requests together"
BIG_CLIENTS = 64
SMALL_CLIENTS = 256


def baseline_tree(revision: str) -> Path:
    """``revision``'s files under .jax_cache (``git archive``: no worktree is registered)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    tree = ROOT / ".jax_cache" / f"archive-{commit}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", commit], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def bodies() -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    small = {"x": rng.normal(size=(1, 64)).round(4).tolist(), "k": 2}
    big = {"x": rng.normal(size=(256, 1024)).round(4).tolist(), "k": 8}
    return json.dumps(small).encode(), json.dumps(big).encode()


class Tally:
    """Latencies of the 200s and of the 503s, and every other status, of one kind of client."""

    def __init__(self) -> None:
        self.ok: list[float] = []
        self.busy: list[float] = []
        self.other: dict[int, int] = {}
        self.broken = 0  # connections closed under the client (a refusal with connection: close)

    def summary(self, seconds: float) -> dict[str, Any]:
        def ms(values: list[float], q: float) -> float:
            return float(np.percentile(values, q) * 1000) if values else float("nan")

        return {
            "rps": len(self.ok) / seconds,
            "p50_ms": ms(self.ok, 50),
            "p99_ms": ms(self.ok, 99),
            "503": len(self.busy),
            "503_p50_ms": ms(self.busy, 50),
            "503_p99_ms": ms(self.busy, 99),
            "other": dict(self.other),
            "broken": self.broken,
        }


async def client(port: int, request: bytes, deadline: float, tally: Tally, backoff: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            try:
                status, _ = await load.read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                tally.broken += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            took = time.perf_counter() - started
            if status == 200:
                tally.ok.append(took)
            elif status == 503:
                tally.busy.append(took)
                if backoff:  # Retry-After: 1
                    await asyncio.sleep(min(1.0, max(0.0, deadline - time.perf_counter())))
            else:
                tally.other[status] = tally.other.get(status, 0) + 1
    finally:
        writer.close()


def refusal_probe(port: int, head: bytes, seconds: float) -> list[float]:
    """Every 20 ms, the headers alone of a big request on a new connection: the time to its 503
    is the time to judge it from its headers (the body is never sent; if it is admitted instead,
    the probe gives up after 0.5 s and counts nothing). Runs in a process of its own (see
    :func:`probe_process`): inside the load generator its times included that process's own
    event loop, busy with 320 clients, beside the server's."""
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.settimeout(0.5)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            connection.sendall(head)
            try:
                status = connection.recv(64)[9:12]
            except TimeoutError:
                status = b""
            if status == b"503":
                latencies.append(time.perf_counter() - started)
        time.sleep(0.02)
    return latencies


async def probe_process(port: int, head: bytes, seconds: float, tally: Tally) -> None:
    """:func:`refusal_probe` in a child process; its latencies go to ``tally.busy``."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--probe", str(port), str(seconds),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await child.communicate(head)
    tally.busy.extend(json.loads(out))


async def phase(
    port: int, small: bytes | None, big: bytes | None, seconds: float
) -> dict[str, Any]:
    deadline = time.perf_counter() + seconds
    small_tally, big_tally, probe_tally = Tally(), Tally(), Tally()
    clients = []
    if small is not None:
        clients += [client(port, small, deadline, small_tally, False) for _ in range(SMALL_CLIENTS)]
    if big is not None:
        clients += [client(port, big, deadline, big_tally, True) for _ in range(BIG_CLIENTS)]
        head = big[: big.index(b"\r\n\r\n") + 4]
        clients.append(probe_process(port, head, seconds, probe_tally))
    began = time.perf_counter()
    await asyncio.gather(*clients)
    took = time.perf_counter() - began
    return {
        "small": small_tally.summary(took),
        "big": big_tally.summary(took),
        "probe": {**probe_tally.summary(took), "times": probe_tally.busy},
    }


def admit_microseconds() -> float:
    """Server-side cost of a refusal judged on the headers (this tree's ingress, no server):
    ``Ingress.admit`` plus the reply, with the bodies' budget full."""
    sys.path.insert(0, str(ROOT))
    from service.ingress.gate import Ingress
    from service.ingress.headers import RequestHeaders
    from service.runtime import ServiceRuntime
    from service.settings import Settings

    ingress = Ingress(ServiceRuntime(Settings.from_env({}, compilation_cache_dir="")))
    endpoint = ingress.endpoint("/v1/topk")
    assert endpoint is not None
    ingress.bodies.held = ingress.bodies.limit  # full
    raw = [(b"content-type", b"application/json"), (b"content-length", b"2199653")]
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        headers = RequestHeaders(raw)
        refused = ingress.admit(endpoint, headers)
        assert refused is not None and refused.status == 503
        ingress.refuse(endpoint, refused, started)
    return (time.perf_counter() - started) / rounds * 1e6


async def run(seconds: float, baseline: str | None, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Every phase on every target, ``rounds`` times over (the machine is shared: one round can
    land on a quiet or a busy minute)."""
    cache = ROOT / ".jax_cache" / "bench"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    small_body, big_body = bodies()
    targets = []
    try:
        targets.append(load.start_service("this tree", True, cache))
        await load.wait_ready(targets[-1], "/readyz")
        if baseline is not None:
            tree = baseline_tree(baseline)
            targets.append(load.start_service(f"baseline {baseline}", True, cache, tree))
            await load.wait_ready(targets[-1], "/readyz")
        small = load.http_request("/v1/topk", small_body)
        big = load.http_request("/v1/topk", big_body)
        results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for target in targets:  # first-touch effects out of the way
            await phase(target.port, small, big, 2.0)
        for _ in range(rounds):
            for target in targets:
                results[target.name].append({})
            for name, small_request, big_request in (
                ("alone", small, None),
                ("big alone", None, big),
                ("mixed", small, big),
            ):
                for target in targets:
                    outcome = await phase(target.port, small_request, big_request, seconds)
                    results[target.name][-1][name] = outcome
                    print(target.name, name, outcome, flush=True)
        return results
    finally:
        for target in targets:
            target.stop()


def ratio(phases: dict[str, Any]) -> float:
    return float(phases["mixed"]["small"]["rps"] / phases["alone"]["small"]["rps"])


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(rounds, key=ratio)[(len(rounds) - 1) // 2]


def report(
    all_rounds: dict[str, list[dict[str, Any]]],
    seconds: float,
    load_before: str,
    admit_us: float,
) -> str:
    results = {name: median_round(rounds) for name, rounds in all_rounds.items()}
    count = len(next(iter(all_rounds.values())))
    baseline = next((name for name in results if name.startswith("baseline")), None)
    lines = [
        SECTION,
        "",
        f"`python bench/mixed.py --duration {seconds:g} --rounds {count}"
        f"{' --baseline ' + baseline.split()[-1] if baseline else ''}` on {platform.machine()}, "
        f"{os.cpu_count()} CPUs shared by the servers, the load generator and other agents "
        f"(load average before the run: {load_before}), CPU JAX; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. {SMALL_CLIENTS} closed-loop clients "
        f"send 1×64 requests; in the mix, {BIG_CLIENTS} more send 256×1024 JSON bodies (~2 MB) and "
        "wait `Retry-After` after a 503. Latencies in ms. Each row is the round with the median "
        "mix ÷ alone ratio; every round's ratio is listed below the table.",
        "",
        "| server | small alone req/s | p50 | p99 | small in the mix req/s | p50 | p99 | mix ÷ alone "
        "| big alone 200/s | big in the mix 200/s | p50 | big 503s | 503 p50 | 503 p99 | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, phases in results.items():
        alone, mixed = phases["alone"]["small"], phases["mixed"]["small"]
        big, big_alone = phases["mixed"]["big"], phases["big alone"]["big"]
        other = {**mixed["other"], **{f"big {k}": v for k, v in big["other"].items()}}
        if mixed["broken"] or big["broken"]:
            other["closed"] = mixed["broken"] + big["broken"]
        lines.append(
            f"| {name} | {alone['rps']:.0f} | {alone['p50_ms']:.1f} | {alone['p99_ms']:.1f} "
            f"| {mixed['rps']:.0f} | {mixed['p50_ms']:.1f} | {mixed['p99_ms']:.1f} "
            f"| {mixed['rps'] / alone['rps']:.0%} | {big_alone['rps']:.1f} | {big['rps']:.1f} "
            f"| {big['p50_ms']:.0f} | {big['503'] + big_alone['503']} "
            f"| {big['503_p50_ms']:.1f} | {big['503_p99_ms']:.1f} | {other or '-'} |"
        )
    this = results["this tree"]
    achieved = ratio(this)
    lines += [""]
    for name, rounds in all_rounds.items():
        each = ", ".join(f"{ratio(r):.0%}" for r in rounds)
        lines.append(f"- {name}: small in the mix ÷ alone, round by round: {each}.")
    lines += [
        "",
        "503 from the headers alone: a probe in a process of its own sends only the headers of a "
        "big request, on a new connection, every 20 ms during the mix; time to the 503 on its "
        "clock, every round's refusals together, beside the big clients alone and in the mix:",
        "",
    ]
    for name, rounds in all_rounds.items():
        cells = []
        for phase_name in ("big alone", "mixed"):
            times: list[float] = []
            for phases in rounds:
                times += phases[phase_name]["probe"]["times"]
            p50, p99 = (np.percentile(times, q) * 1000 if times else math.nan for q in (50, 99))
            cells.append(f"{phase_name}: {len(times)} refusals, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        lines.append(f"- {name}: " + "; ".join(cells) + ".")
    lines += [
        "",
        f"The server's own work for one (this tree, `Ingress.admit` plus the reply): "
        f"{admit_us:.1f} µs.",
        "",
        f"Goal (issue 15): small requests in the mix keep ≥ 50 % of their throughput alone, with a "
        f"bounded p99: {achieved:.0%} in the median round ({'met' if achieved >= 0.5 else 'NOT met'}), p99 "
        f"{this['mixed']['small']['p99_ms']:.0f} ms.",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    text = load.RESULTS.read_text()
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    load.RESULTS.write_text(text)


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:  # the child of probe_process
        port, seconds = int(sys.argv[2]), float(sys.argv[3])
        print(json.dumps(refusal_probe(port, sys.stdin.buffer.read(), seconds)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--baseline", metavar="REV", help="also run the service as of REV")
    parser.add_argument("--rounds", type=int, default=3, help="every phase this many times")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    arguments = parser.parse_args()
    load_before = " ".join(f"{value:.1f}" for value in os.getloadavg())
    results = asyncio.run(run(arguments.duration, arguments.baseline, arguments.rounds))
    section = report(results, arguments.duration, load_before, admit_microseconds())
    print(section)
    if not arguments.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
