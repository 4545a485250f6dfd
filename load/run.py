"""``make load``: serve locally, run one Locust scenario headless, write results, gate.

    python load/run.py --duration 60                  # the locustfile's default mix (every User)
    python load/run.py --scenario router --duration 60 --users 8
    python load/run.py --scenario mixed --pace 5      # paced: 5 requests/s per user

Steps: start ``python -m service`` with the default settings (plus the caller's ``TOPK_*``) on a
free 127.0.0.1 port in its own process (so JAX and gevent never share one), wait for ``/readyz``, scrape ``/metrics``, run Locust as a subprocess
for a bounded ``--run-time``, scrape again, stop the server, then write under ``--results``:
``<scenario>_stats.csv`` / ``_stats_history.csv`` / ``_failures.csv`` / ``.json`` (Locust),
``<scenario>.png`` (throughput and p50/p95/p99 over time), ``<scenario>_metrics_{before,after}.txt``,
``<scenario>.md`` (client vs server latencies) and ``<scenario>_server.log``.
The exit status is Locust's (the gate in the locustfile), or 2 if the server never got ready.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from report import markdown_report, plot_history, read_aggregate, read_history

LOAD_DIR = Path(__file__).resolve().parent
REPO = LOAD_DIR.parent
USER_CLASSES: dict[str, str | None] = {
    "default": None,  # no class named: Locust runs every User class of the file, equally weighted
    "router": "RouterUser",
    "pruning": "PruningUser",
    "classification": "ClassificationUser",
    "mixed": "MixedUser",
    "soak": "SoakUser",
}
PRUNING_N = 131072  # ≥ 10^5 yet small enough for a shared 2-core box; LOAD_PRUNING_N overrides


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(USER_CLASSES), default="default")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=8.0, help="users started per second")
    parser.add_argument(
        "--pace", type=float, default=0.0, help="requests/s per user (0: closed loop)"
    )
    parser.add_argument("--pruning-n", type=int, default=PRUNING_N)
    parser.add_argument("--p95-budget-ms", type=float, help="override the locustfile budget")
    parser.add_argument("--results", type=Path, default=LOAD_DIR / "results")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="warm-up allowance")
    return parser.parse_args()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_environment() -> dict[str, str]:
    """The server runs with the default settings (every scenario fits in them, and nothing
    compiles on the request path); the caller's own TOPK_* variables are passed through."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("TOPK_GRPC_PORT", "")  # HTTP load only: no gRPC port to collide with
    env.setdefault("TOPK_DRAIN_DELAY_S", "0")  # no load balancer to warn: stop at once
    return env


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_ready(base_url: str, server: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            if get(f"{base_url}/readyz", timeout=2.0)[0] == 200:
                return True
        except OSError:
            pass  # not listening yet
        time.sleep(0.25)
    return False


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM (readiness off, drain), then SIGKILL if it does not leave in time."""
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def run_locust(args: argparse.Namespace, base_url: str, prefix: Path) -> tuple[int, str]:
    env = dict(os.environ, LOAD_PACE=str(args.pace), LOAD_PRUNING_N=str(args.pruning_n))
    if args.p95_budget_ms is not None:
        env["LOAD_P95_BUDGET_MS"] = str(args.p95_budget_ms)
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOAD_DIR / "locustfile.py"),
        "--headless", "--only-summary",
        "--host", base_url,
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate),
        "--run-time", f"{max(1, round(args.duration))}s",
        "--stop-timeout", "10",
        "--csv", str(prefix), "--csv-full-history",
        "--json-file", str(prefix),
    ]  # fmt: skip
    user_class = USER_CLASSES[args.scenario]
    if user_class is not None:
        command.append(user_class)
    print("$", " ".join(command), flush=True)
    # Hard bound on top of --run-time: spawn, stop timeout and start-up, with room to spare.
    limit = args.duration + 120
    completed = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=limit, check=False
    )
    output = completed.stdout + completed.stderr
    (prefix.parent / f"{prefix.name}_locust.log").write_text(output)
    gate_line = next((ln for ln in output.splitlines() if "GATE " in ln), "")
    return completed.returncode, gate_line[gate_line.find("GATE ") :]


def main() -> int:
    args = parse_arguments()
    args.results.mkdir(parents=True, exist_ok=True)
    prefix = args.results / args.scenario
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning"]
    log_path = args.results / f"{args.scenario}_server.log"
    with log_path.open("wb") as server_log:
        server = subprocess.Popen(
            command,
            cwd=REPO,
            env=server_environment(),
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        try:
            print(f"server pid {server.pid} on {base_url}; waiting for /readyz", flush=True)
            started = time.monotonic()
            if not wait_ready(base_url, server, args.ready_timeout):
                print(f"server never got ready; see {log_path}", file=sys.stderr)
                return 2
            print(f"ready after {time.monotonic() - started:.1f} s", flush=True)
            before = get(f"{base_url}/metrics")[1]
            exit_code, gate_line = run_locust(args, base_url, prefix)
            after = get(f"{base_url}/metrics")[1]
        finally:
            stop(server)
    (args.results / f"{args.scenario}_metrics_before.txt").write_text(before)
    (args.results / f"{args.scenario}_metrics_after.txt").write_text(after)
    title = (
        f"{args.scenario}: {args.users} users, "
        f"{'closed loop' if args.pace <= 0 else f'{args.pace:g} req/s per user'}, "
        f"{args.duration:g} s"
    )
    history_csv = Path(f"{prefix}_stats_history.csv")
    if history_csv.exists():
        plot_history(read_history(history_csv), Path(f"{prefix}.png"), title)
    stats_csv = Path(f"{prefix}_stats.csv")
    aggregate = read_aggregate(stats_csv) if stats_csv.exists() else {}
    report = markdown_report(title, aggregate, before, after, gate_line, exit_code)
    Path(f"{prefix}.md").write_text(report)
    print(report)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
