"""``make soak``: hours of mixed traffic at 80 % of the measured saturation, then a burst of big
bodies; failures must be 0 and memory and file descriptors must come back.

    python load/soak.py                         # 10 minutes (the default)
    python load/soak.py --duration 3600         # an hour
    python load/soak.py --duration 20 --saturation-seconds 6 --sample-interval 2   # a smoke run

Steps: start ``python -m service`` (scenario ``soak`` of load/run.py: small, batched and
256 × 1024 sparse requests warmed up), measure the saturation with the same mix closed-loop
(``--saturation-seconds``; the rate of its most limited kind of request, see
:func:`mix_saturation`), run it paced at
``--load`` (0.8) of that rate for ``--duration``
seconds (``SoakUser``: small and batched requests, a rare big body, and bad requests that must each
get their 4xx naming the field), then send a burst of big bodies (``--burst-bodies`` 256 × 1024
JSON bodies from ``--burst-clients`` connections at once, each honouring ``Retry-After``) and wait
``--settle-seconds``. The server's RSS and open file descriptors are sampled every
``--sample-interval`` seconds (10) throughout. Written under ``--results`` (load/results/soak):
``soak.png`` (throughput and failures, p50/p99, RSS and file descriptors over time, one figure),
``soak.json`` and ``soak.md`` (the numbers and the verdict), Locust's CSVs and both processes' logs.

The exit status is 0 only if no request failed (Locust's gate: failures, p95 budget), the burst
got every body answered, the RSS after the burst settled within ``--rss-slack-mib`` of what it
was before the burst, and the file descriptors came back to within 8 of it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # noqa: E402  (after report, which selects the Agg backend)
from report import _number, read_aggregate, read_history
from run import (
    LOAD_DIR,
    REPO,
    free_loopback_port,
    run_locust,
    server_environment,
    stop,
    wait_ready,
)

FD_SLACK = 8


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of paced load")
    parser.add_argument("--saturation-seconds", type=float, default=30.0)
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the saturation")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--sample-interval", type=float, default=10.0)
    parser.add_argument("--burst-bodies", type=int, default=64)
    parser.add_argument("--burst-clients", type=int, default=16)
    parser.add_argument("--settle-seconds", type=float, default=30.0)
    parser.add_argument("--rss-slack-mib", type=float, default=64.0)
    parser.add_argument("--results", type=Path, default=LOAD_DIR / "results" / "soak")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    return parser.parse_args()


# ------------------------------------------------------------------------------ sampling


def rss_mib(pid: int) -> float:
    """The RSS of ``pid`` and of its children: the server's body reader is a child process
    (service/ingress/reader_process.py), and its memory is the server's too."""
    total = 0
    for process in (pid, *children(pid)):
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from each process's parent in /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        below = [child for child, of in parents.items() if of == parent]
        found += below
        frontier += below
    return found


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sampler:
    """RSS and open descriptors of ``pid`` every ``interval`` seconds, labelled by phase."""

    pid: int
    interval: float
    phase: str = "warm"
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> dict[str, Any]:
        entry = {"time": time.time(), "phase": self.phase, "rss_mib": rss_mib(self.pid),
                 "fds": open_fds(self.pid)}  # fmt: skip
        self.samples.append(entry)
        return entry

    def _run(self) -> None:
        while not self._stop.wait(
            min(self.interval, 1.0) if self.phase == "burst" else self.interval
        ):
            try:
                self.sample()
            except OSError:  # the server is gone
                return

    def start(self) -> None:
        self.sample()
        threading.Thread(target=self._run, name="soak-sampler", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------------------ saturation


def mix_saturation(stats_csv: Path) -> tuple[float, dict[str, float]]:
    """The total rate at which the mix saturates: that of its most limited kind of request.

    In the closed-loop probe each kind ``i`` was picked a share ``p_i`` of the time and served
    (not refused) at ``r_i`` per second; with the mix's proportions kept, kind ``i`` saturates at a
    total of ``r_i / p_i``. Big bodies get a bounded share of the server (their refusals, 503 past
    the bodies' budget, come back fast and would inflate a plain requests/s), so they are usually
    the limit."""
    with stats_csv.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] != "Aggregated"]
    picked = sum(int(row["Request Count"]) for row in rows)
    lanes = {}
    for row in rows:
        count, failed = int(row["Request Count"]), int(row["Failure Count"])
        if count:
            served = _number(row["Requests/s"]) * (count - failed) / count
            lanes[row["Name"]] = served / (count / picked)
    return min(lanes.values()), lanes


# ------------------------------------------------------------------------------ the burst


def big_body() -> bytes:
    rng = random.Random(3)
    rows = [[rng.gauss(0.0, 1.0) for _ in range(1024)] for _ in range(256)]
    return json.dumps({"x": rows, "k": 8}).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    headers = {k.lower(): v for k, v in headers.items()}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers, body


async def burst(port: int, bodies: int, clients: int) -> dict[str, Any]:
    """``bodies`` big requests from ``clients`` connections at once; a 503 waits its
    ``Retry-After`` and sends again. Every body must end in a 200 with 256 rows."""
    body = big_body()
    head = (
        "POST /v1/topk HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    remaining = list(range(bodies))
    counts = {"200": 0, "503": 0, "wrong": 0}

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining:
                remaining.pop()
                while True:
                    writer.write(head + body)
                    status, headers, answer = await read_response(reader)
                    if status == 503:
                        counts["503"] += 1
                        if headers.get("connection") == "close":
                            writer.close()
                            reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        await asyncio.sleep(float(headers.get("retry-after", "1")))
                        continue
                    rows = json.loads(answer).get("rows", []) if status == 200 else []
                    counts["200" if len(rows) == 256 else "wrong"] += 1
                    break
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {**counts, "seconds": time.monotonic() - started, "body_bytes": len(body)}


# ------------------------------------------------------------------------------ report


def plot(
    samples: list[dict[str, Any]], history: list[dict[str, str]], png: Path, title: str
) -> None:
    start = samples[0]["time"]
    figure, axes = plt.subplots(4, 1, sharex=True, figsize=(10, 10))
    throughput, latency, memory, descriptors = axes
    if history:
        seconds = [_number(row["Timestamp"]) - start for row in history]
        throughput.plot(seconds, [_number(r["Requests/s"]) for r in history], label="requests/s")
        throughput.plot(seconds, [_number(r["Failures/s"]) for r in history], label="failures/s")
        for column in ("50%", "99%"):
            values = [_number(r[column]) for r in history]
            latency.plot(seconds, values, label=f"p{column[:-1]}")
    throughput.set_ylabel("per second")
    throughput.legend(loc="upper left")
    latency.set_ylabel("latency (ms, client)")
    latency.legend(loc="upper left")
    times = [s["time"] - start for s in samples]
    memory.plot(times, [s["rss_mib"] for s in samples], marker=".", label="RSS")
    memory.set_ylabel("server RSS, with its children (MiB)")
    descriptors.plot(times, [s["fds"] for s in samples], marker=".", color="tab:green")
    descriptors.set_ylabel("open file descriptors")
    descriptors.set_xlabel("seconds since the server was ready")
    for axis in axes:  # the phases, as shaded spans
        for phase, colour in (("saturation", "tab:orange"), ("burst", "tab:red")):
            inside = [s["time"] - start for s in samples if s["phase"] == phase]
            if inside:
                axis.axvspan(min(inside), max(inside), color=colour, alpha=0.12)
    figure.suptitle(title + "  (orange: saturation probe, red: burst of big bodies)")
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def by_phase(samples: list[dict[str, Any]], phase: str, key: str) -> list[float]:
    return [s[key] for s in samples if s["phase"] == phase]


def summary(
    samples: list[dict[str, Any]],
    saturation: float,
    target: float,
    aggregate: dict[str, str],
    burst_result: dict[str, Any],
    gate_line: str,
    exit_code: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    before_burst = by_phase(samples, "soak", "rss_mib")[-1]
    fds_before = by_phase(samples, "soak", "fds")[-1]
    settled, fds_settled = samples[-1]["rss_mib"], samples[-1]["fds"]
    checks = {
        "no failed request": int(aggregate.get("Failure Count", "1") or 1) == 0,
        "Locust gate passed": exit_code == 0,
        "every burst body answered": burst_result["200"] == args.burst_bodies
        and not burst_result["wrong"],
        f"RSS back within {args.rss_slack_mib:g} MiB": settled <= before_burst + args.rss_slack_mib,
        f"file descriptors back within {FD_SLACK}": fds_settled <= fds_before + FD_SLACK,
    }
    return {
        "saturation_rps": saturation,
        "target_rps": target,
        "requests": int(aggregate.get("Request Count", "0") or 0),
        "failures": int(aggregate.get("Failure Count", "0") or 0),
        "rps": _number(aggregate.get("Requests/s")),
        "p50_ms": _number(aggregate.get("50%")),
        "p99_ms": _number(aggregate.get("99%")),
        "gate": gate_line,
        "rss_mib": {
            "ready": samples[0]["rss_mib"],
            "soak_max": max(by_phase(samples, "soak", "rss_mib")),
            "before_burst": before_burst,
            "burst_max": max(by_phase(samples, "burst", "rss_mib") or [float("nan")]),
            "settled": settled,
        },
        "fds": {
            "ready": samples[0]["fds"],
            "max": max(s["fds"] for s in samples),
            "before_burst": fds_before,
            "settled": fds_settled,
        },  # fmt: skip
        "burst": burst_result,
        "checks": checks,
        "passed": all(checks.values()),
    }


def markdown(result: dict[str, Any], title: str) -> str:
    rss, fds, burst_result = result["rss_mib"], result["fds"], result["burst"]
    lines = [
        f"# {title}",
        "",
        f"Saturation of the mix (closed loop, the most limited kind of request): "
        f"{result['saturation_rps']:.0f} req/s ("
        + ", ".join(f"{name} {rate:.0f}" for name, rate in sorted(result["lanes"].items()))
        + f"); paced at {result['target_rps']:.0f} req/s, {result['rps']:.0f} achieved (a paced "
        "user waiting on a slow big request falls behind its pace).",
        "",
        "| requests | failures | req/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
        f"| {result['requests']} | {result['failures']} | {result['rps']:.1f} "
        f"| {result['p50_ms']:.0f} | {result['p99_ms']:.0f} |",
        "",
        "| server RSS with its children (MiB) | ready | max during the soak | before the burst | max in the burst "
        "| settled after it |",
        "|---|---:|---:|---:|---:|---:|",
        f"| | {rss['ready']:.0f} | {rss['soak_max']:.0f} | {rss['before_burst']:.0f} "
        f"| {rss['burst_max']:.0f} | {rss['settled']:.0f} |",
        "",
        f"Open file descriptors: {fds['ready']} when ready, at most {fds['max']}, "
        f"{fds['before_burst']} before the burst, {fds['settled']} after it.",
        "",
        f"Burst: {burst_result['200']} big bodies of {burst_result['body_bytes'] / 2**20:.1f} MiB "
        f"answered in {burst_result['seconds']:.1f} s, {burst_result['503']} answers 503 "
        f"(retried after Retry-After), {burst_result['wrong']} wrong.",
        "",
        f"Gate: `{result['gate'] or 'no gate line'}`",
        "",
        *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in result["checks"].items()),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the run


def main() -> int:
    args = parse_arguments()
    args.results.mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning"]
    log_path = args.results / "soak_server.log"
    with log_path.open("wb") as server_log:
        server = subprocess.Popen(
            command,
            cwd=REPO,
            env=server_environment(),  # the default limits
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        try:
            print(f"server pid {server.pid} on {base_url}; waiting for /readyz", flush=True)
            if not wait_ready(base_url, server, args.ready_timeout):
                print(f"server never got ready; see {log_path}", file=sys.stderr)
                return 2
            sampler = Sampler(server.pid, args.sample_interval)
            sampler.start()

            sampler.phase = "saturation"
            probe = argparse.Namespace(
                scenario="soak", users=args.users, spawn_rate=float(args.users), pace=0.0,
                duration=args.saturation_seconds, pruning_n=4096, p95_budget_ms=1e9,
            )  # fmt: skip
            run_locust(probe, base_url, args.results / "saturation")
            saturation, lanes = mix_saturation(args.results / "saturation_stats.csv")
            target = args.load * saturation
            print(f"saturation {saturation:.0f} req/s; soaking at {target:.0f}", flush=True)

            sampler.phase = "soak"
            sampler.sample()
            paced = argparse.Namespace(
                scenario="soak", users=args.users, spawn_rate=float(args.users),
                pace=target / args.users, duration=args.duration, pruning_n=4096,
                p95_budget_ms=None,
            )  # fmt: skip
            exit_code, gate_line = run_locust(paced, base_url, args.results / "soak")
            sampler.sample()

            sampler.phase = "burst"
            burst_result = asyncio.run(burst(port, args.burst_bodies, args.burst_clients))
            sampler.sample()
            sampler.phase = "settled"
            time.sleep(args.settle_seconds)
            sampler.sample()
            sampler.stop()
        finally:
            stop(server)
    aggregate = read_aggregate(args.results / "soak_stats.csv")
    history = read_history(args.results / "soak_stats_history.csv")
    result = summary(
        sampler.samples, saturation, target, aggregate, burst_result, gate_line, exit_code, args
    )
    result["lanes"] = lanes
    result["samples"] = sampler.samples
    title = (
        f"soak: {args.duration:g} s at {args.load:.0%} of saturation, {args.users} users, "
        f"then {args.burst_bodies} big bodies"
    )
    plot(sampler.samples, history, args.results / "soak.png", title)
    (args.results / "soak.json").write_text(json.dumps(result, indent=1))
    report = markdown(result, title)
    (args.results / "soak.md").write_text(report)
    print(report)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
