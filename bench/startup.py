"""Start-up benchmark: time to ready with the default settings, and what a cover costs in padding.

Part 1 starts ``python -m service`` (default settings; only the port and the cache directory are
set) in its own process, several times, and times process start → ``GET /readyz`` 200:

- cold: an empty cache directory (every cover kernel traced, lowered and compiled);
- warm: the same directory again (the covers load from the executable store);
- moved: the directory copied to another path (a primed Docker image, a mounted volume).

(JAX's own persistent cache is off since 2026-12-03: its hits do not serialize whole on XLA:CPU,
see service/device/executable_store.py; the store is the only on-disk cache.)

For each it prints the wall time, the server's CPU seconds at ready (load-independent), and the
kernels compiled and loaded (``topk_kernel_{compilations,loads}_total``).

Part 2 loads the cover kernels from the store of part 1 in this process and measures, for the
README's use cases, one batch on its exact kernel against the same batch on the cover that serves
it until the exact kernel is built (the planner's calls: as many as the cover's rows need).

Part 3 (``--compile-cost``, in this process) lowers and compiles each variant of the default
variant table alone, then each whole cover, at the cover buckets, and prints the CPU seconds and
wall time of each step: which variants dominate a cold start.

    python bench/startup.py              # both parts; writes the "## Start-up" section of RESULTS.md
    python bench/startup.py --no-write   # print only
    python bench/startup.py --starts-only --repeat 3   # part 1 only, three times; print only
    python bench/startup.py --compile-cost             # part 3 only; print only
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_values(text: str, name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            label = re.search(r'phase="(\w+)"', line)
            values[label.group(1) if label else ""] = float(line.split()[-1])
    return values


def time_to_ready(cache: Path, timeout: float = 900.0) -> dict[str, Any]:
    """One server start: seconds to ready, its CPU seconds then, kernels compiled and loaded."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPK_")}
    env |= {"JAX_PLATFORMS": env.get("JAX_PLATFORMS", "cpu"), "TOPK_PORT": str(port)}
    env |= {"TOPK_COMPILATION_CACHE_DIR": str(cache), "TOPK_LOG_LEVEL": "warning"}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError("the server exited before it was ready")
            if time.perf_counter() - started > timeout:
                raise TimeoutError("the server was not ready in time")
            try:
                if get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(server.pid)
        metrics = get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "seconds": seconds,
        "cpu": cpu,
        "compiled": metric_values(metrics, "topk_kernel_compilations_total").get("warmup", 0),
        "loaded": metric_values(metrics, "topk_kernel_loads_total").get("warmup", 0),
    }


def part_one(workdir: Path) -> tuple[list[str], Path]:
    cache = workdir / "cache"
    runs: list[tuple[str, dict[str, Any]]] = []
    runs.append(("cold (empty cache)", time_to_ready(cache)))
    runs.append(("warm (executable store)", time_to_ready(cache)))
    moved = workdir / "moved"
    shutil.copytree(cache, moved)
    runs.append(("warm, cache copied to another path", time_to_ready(moved)))
    lines = [
        "| start | time to ready | server CPU at ready | kernels compiled | kernels loaded |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, run in runs:
        lines.append(
            f"| {name} | {run['seconds']:.1f} s | {run['cpu']:.1f} s | {run['compiled']:.0f} "
            f"| {run['loaded']:.0f} |"
        )
        print(lines[-1], flush=True)
    return lines, cache


# ------------------------------------------------------------------------------ part 2

CASES: list[tuple[str, str, str, bool, int, int, int]] = [
    # name, operator, output, lanes, rows, n, k
    ("router: hard mask", "hard", "mask", False, 256, 16, 2),
    ("router: sparse mask", "sparse", "mask", False, 256, 64, 2),
    ("classification: sparse mask + JVP/VJP", "sparse", "mask", True, 32, 1024, 5),
    ("pruning: hard magnitude", "hard", "magnitude", False, 1, 2**20, 2**20 // 100),
    ("soft sort", "sort", "values", False, 8, 100, 1),
    ("long rows: sparse magnitude", "sparse", "magnitude", False, 4, 4096, 40),
]


def best_of(function: Any, repeats: int = 5) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def device_time(engine: Any, key: Any, form: Any, whole: Any, per_call: int) -> tuple[float, int]:
    """Best-of-5 device time of a padded batch on ``key``'s kernel, ``per_call`` rows a call."""
    import jax

    from service.device.assembly import take_rows
    from service.device.kernels import KernelInputs, arguments, selector

    rows = len(whole.lengths)
    chunks = [
        take_rows(whole, start, min(start + per_call, rows), key.bucket)
        for start in range(0, rows, per_call)
    ]
    if key.lanes and whole.tangent is None:
        zero = np.zeros((key.bucket.rows, key.bucket.n), np.float32)
        chunks = [KernelInputs(c.x, c.k, c.epsilon, c.lengths, zero, zero) for c in chunks]
    executable, select = engine.kernels.get(key), selector(key, form)

    def calls() -> None:
        for chunk in chunks:
            jax.block_until_ready(executable(*arguments(key, select, chunk)))

    return best_of(calls), len(chunks)


def part_two(cache: Path) -> list[str]:
    from service.device.engine import Engine
    from service.device.kernels import KernelInputs, KernelKey
    from service.device.operators import bind_operators
    from service.device.variants import form_of
    from service.settings import Settings

    settings = Settings.from_env({}, compilation_cache_dir=str(cache), compile_on_demand=False)
    engine = Engine(settings, bind_operators(settings.p_values))
    for key in engine.covers:
        assert engine.kernels.build(key, compile_missing=False) == "loaded", "run part 1 first"
    engine._ready_covers = engine.covers
    rng = np.random.default_rng(0)
    lines = [
        "| batch | exact bucket | device time, exact | served by cover | calls | device time,"
        " cover | cover / exact |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for name, operator_name, output, lanes, rows, n, k in CASES:
        operator = engine.operators[operator_name]
        form = form_of(operator, output, operator.static({}))
        x = rng.normal(size=(rows, n)).astype(np.float32)
        whole = KernelInputs(
            x,
            np.full(rows, k, np.int32),
            np.full(rows, 0.5, np.float32),
            np.full(rows, n, np.int32),
            x if lanes else None,
            x if lanes else None,
        )
        cover, take = engine.plan(form, lanes, rows, n)
        exact = KernelKey((form.variant,), lanes, engine.ladder.bucket_for(rows, n))
        engine.kernels.build(exact)

        exact_seconds, _ = device_time(engine, exact, form, whole, exact.bucket.rows)
        cover_seconds, calls = device_time(engine, cover, form, whole, take)
        lines.append(
            f"| {name}, {rows}×{n} | {exact.bucket} | {exact_seconds * 1e3:.2f} ms "
            f"| {cover.bucket} | {calls} | {cover_seconds * 1e3:.2f} ms "
            f"| {cover_seconds / exact_seconds:.1f}× |"
        )
        print(lines[-1], flush=True)
    engine.close()
    return lines


# ------------------------------------------------------------------------------ part 3


def compile_cost() -> list[str]:
    """Trace+lower and compile CPU seconds (and wall) of each variant alone and of each cover."""
    import jax

    from service.device.kernels import KernelKey, argument_shapes, kernel_function
    from service.device.operators import bind_operators
    from service.device.variants import variant_table
    from service.settings import Settings

    settings = Settings.from_env({})
    table = variant_table(bind_operators(settings.p_values))
    lines = [
        "| kernel | bucket | lower CPU | compile CPU | compile wall |",
        "|---|---|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for bucket in settings.covers:
        for variants in [(variant,) for variant in table] + [table]:
            key = KernelKey(variants, True, bucket)
            cpu = time.process_time()
            lowered = jax.jit(kernel_function(variants, True)).lower(*argument_shapes(key))
            lowered_cpu, compile_started = time.process_time(), time.perf_counter()
            lowered.compile()
            name = str(variants[0]) if len(variants) == 1 else f"cover: all {len(variants)}"
            lines.append(
                f"| {name} | {bucket} | {lowered_cpu - cpu:.2f} s"
                f" | {time.process_time() - lowered_cpu:.2f} s"
                f" | {time.perf_counter() - compile_started:.2f} s |"
            )
            print(lines[-1], flush=True)
    return lines


def write_section(text: str) -> None:
    current = RESULTS.read_text()
    pattern = re.compile(r"^## Start-up\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text, current)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(updated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument(
        "--starts-only", action="store_true", help="part 1 only (print only, no RESULTS.md)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of part 1 (--starts-only)")
    parser.add_argument(
        "--compile-cost", action="store_true", help="part 3 only (print only, no RESULTS.md)"
    )
    arguments = parser.parse_args()
    load = os.getloadavg()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"{machine}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
    if arguments.compile_cost:
        compile_cost()
        return
    if arguments.starts_only:
        for _ in range(arguments.repeat):
            with tempfile.TemporaryDirectory() as directory:
                Path(directory).chmod(0o700)
                part_one(Path(directory))
            print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
        return
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        workdir.chmod(0o700)
        starts, cache = part_one(workdir)
        padding = part_two(cache)
    after = os.getloadavg()
    from service.settings import Settings

    settings = Settings.from_env({})
    section = "\n".join(
        [
            "## Start-up",
            "",
            f"`python bench/startup.py` on {machine}, load average {load[0]:.1f} before and"
            f" {after[0]:.1f} after (other agents shared the CPU). Default settings: covers"
            f" {', '.join(settings.cover_buckets)}, {settings.compile_threads} compile threads.",
            "",
            *starts,
            "",
            "One batch on its exact kernel, and on the cover that serves it until the exact"
            " kernel is built in the background (device time, best of 5):",
            "",
            *padding,
            "",
        ]
    )
    print(section)
    if not arguments.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
