"""Core-operator benchmark: sparse top-k solvers vs ``jax.lax.top_k`` and the PyPI peers.

Run: ``PYTHONPATH=. python bench/core.py [--quick] [--shapes moe,prune]`` (float32; CPU, or the
device JAX picks: ``lax.top_k`` is then timed on the same device).

Every time is measured in this one process: the median of repeated calls of a jitted function on
the same array after one warm-up call (compile excluded), each call ending with
``jax.block_until_ready``. Ratios are to ``jax.lax.top_k`` (static k, values + indices) on the same
array; for the magnitude shape, ``lax.top_k(|x|, k)``. Slow methods get fewer repetitions and a
method whose warm-up call exceeds ``--max-call`` seconds is skipped with a note.

stdout carries only the Markdown tables (so RESULTS.md can include them verbatim); progress and
notes go to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    label: str
    rows: int
    n: int
    k: int
    magnitude: bool = False


SHAPES = [
    Shape("moe", "MoE router", 4096, 64, 2),
    Shape("moe1", "MoE router", 4096, 64, 1),
    Shape("moe8", "MoE router", 4096, 256, 8),
    Shape("cls5", "classification", 256, 1000, 5),
    Shape("cls128", "classification", 256, 1024, 128),
    Shape("wide", "wide rows", 16, 16384, 2048),
    Shape("prune", "pruning (magnitude)", 1, 1_000_000, 100_000, magnitude=True),
]

# (row key, row label); the order of the rows of the timing table.
METHODS = [
    ("topk", "`lax.top_k` (static k; baseline)"),
    ("fwd", "**default** (`auto` = threshold, p=4/3) fwd"),
    ("jvp", "**default** fwd+JVP"),
    ("fwd2", "default, p=2, fwd"),
    ("pav", "PAV (p=4/3) fwd"),
    ("pav_jvp", "PAV (p=4/3) fwd+JVP"),
    ("dykstra", "Dykstra (p=2) fwd"),
    ("hard", "`core.hard_topk_mask` (k as data)"),
    ("ott", "ott-jax `topk_mask` (entropic OT, fwd only)"),
    ("jaxopt", "jaxopt `isotonic_l2_pav` (isotonic step only, p=2, numba)"),
    ("scipy", "numpy sort + scipy PAV per row (p=2, CPU floor)"),
]
SLOW = {"pav", "pav_jvp", "dykstra", "ott", "jaxopt", "scipy"}


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


@dataclass
class Timing:
    ms: float  # median of the timed calls
    calls: int
    note: str
    output: Any  # the last call's result (for the agreement checks)


@dataclass
class Method:
    """A callable and its arguments; ``jitted`` ones are compiled ahead of time (compile excluded)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    jitted: bool = True


def timed(method: Method, slow: bool, repeats: int, budget: float, max_call: float) -> Timing:
    """Median wall time of ``fn(*args)``, compile excluded, each call ending in block_until_ready.

    Jitted functions are compiled ahead of time (``lower().compile()``). With ``slow`` the first
    call is timed too (no warm-up) and a first call longer than ``max_call`` seconds is the only
    one. Stops early once ``budget`` seconds of timed calls are spent (at least one timed call).
    """
    fn = method.fn.lower(*method.args).compile() if method.jitted else method.fn

    outputs: list[Any] = []

    def call() -> float:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*method.args))
        elapsed = time.perf_counter() - t0
        outputs[:] = [out]
        return elapsed

    if not slow:
        call()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        times.append(call())
        if time.perf_counter() - start > budget or times[0] > max_call:
            break
    note = f"one call of {times[0]:.0f} s > {max_call:.0f} s" if times[0] > max_call else ""
    return Timing(1e3 * statistics.median(times), len(times), note, outputs[0])


def timed_interleaved(methods: dict[str, Method], repeats: int, budget: float) -> dict[str, Timing]:
    """Median wall times of fast jitted methods, measured in interleaved rounds.

    Each method is compiled ahead of time and called once untimed; then every round calls each
    method once, so a change of the machine's load (two cores shared with other jobs) shifts all of
    them alike and the ratios between them stay meaningful. Stops after ``repeats`` rounds or once
    ``budget`` seconds are spent (at least one round).
    """
    compiled = {key: m.fn.lower(*m.args).compile() for key, m in methods.items()}
    outputs = {key: jax.block_until_ready(fn(*methods[key].args)) for key, fn in compiled.items()}
    times: dict[str, list[float]] = {key: [] for key in methods}
    start = time.perf_counter()
    for _ in range(repeats):
        for key, fn in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*methods[key].args))
            times[key].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return {
        key: Timing(1e3 * statistics.median(ts), len(ts), "", outputs[key])
        for key, ts in times.items()
    }


# ------------------------------------------------------------------------------- the methods


def scipy_floor(x: np.ndarray, k: int, eps: float, magnitude: bool) -> np.ndarray:
    """p = 2 sparse top-k by sort + SciPy PAV + back-permutation, one row at a time (float64 PAV)."""
    from scipy.optimize import isotonic_regression

    out = np.empty_like(x)
    n = x.shape[-1]
    w = np.zeros(n)
    w[:k] = 1.0
    for i, row in enumerate(x):
        a = np.abs(row) if magnitude else row
        order = np.argsort(-a, kind="stable")
        s = a[order].astype(np.float64)
        if magnitude:  # weighted L2 isotonic of s / (1 + eps w) with weights 1 + eps w
            weights = 1.0 + eps * w
            v = isotonic_regression(s / weights, weights=weights, increasing=False).x
            y = (s - v) / eps + (s - v)
        else:
            v = isotonic_regression(s - eps * w, increasing=False).x
            y = (s - v) / eps
        res = np.empty(n, dtype=x.dtype)
        res[order] = y
        out[i] = np.sign(row) * res if magnitude else res
    return out


def build(
    shape: Shape, x: jax.Array, t: jax.Array, eps: float, ott_iterations: int, skip: set[str]
) -> dict[str, Method]:
    """Every method on this shape but ``skip``; k and epsilon are data except where a method needs
    them static. The peers are imported only when they run (a GPU host may not have them)."""
    k = shape.k
    k_data = jnp.asarray(k, jnp.int32)
    eps_data = jnp.asarray(eps, jnp.float32)
    op = core.sparse_topk_magnitude if shape.magnitude else core.sparse_topk_mask
    score = jnp.abs if shape.magnitude else (lambda z: z)

    def forward(p: float, solver: str) -> Method:
        f = jax.jit(lambda z, kk, e: op(z, kk, epsilon=e, p=p, solver=solver))
        return Method(f, (x, k_data, eps_data))

    def forward_jvp(p: float, solver: str) -> Method:
        def g(z: jax.Array, dz: jax.Array, kk: jax.Array, e: jax.Array) -> Any:
            return jax.jvp(lambda y: op(y, kk, epsilon=e, p=p, solver=solver), (z,), (dz,))

        return Method(jax.jit(g), (x, t, k_data, eps_data))

    hard_op = core.hard_topk_magnitude if shape.magnitude else core.hard_topk_mask
    methods = {
        "topk": Method(jax.jit(lambda z: jax.lax.top_k(score(z), k)), (x,)),
        "fwd": forward(4.0 / 3.0, "auto"),
        "jvp": forward_jvp(4.0 / 3.0, "auto"),
        "fwd2": forward(2.0, "auto"),
        "pav": forward(4.0 / 3.0, "pav"),
        "pav_jvp": forward_jvp(4.0 / 3.0, "pav"),
        "dykstra": forward(2.0, "dykstra"),
        "hard": Method(jax.jit(hard_op), (x, k_data)),
    }

    if "ott" in skip and "jaxopt" in skip:
        methods["scipy"] = Method(
            scipy_floor, (np.asarray(x), k, eps, shape.magnitude), jitted=False
        )
        return methods

    from ott.tools import soft_sort

    def ott(z: jax.Array) -> jax.Array:
        # topk_mask vmaps over the other axes itself (apply_on_axis); k is static, eps absolute.
        return soft_sort.topk_mask(
            score(z), axis=-1, k=k, epsilon=eps, squashing_fun=lambda y: y,
            max_iterations=ott_iterations,
        )  # fmt: skip

    methods["ott"] = Method(jax.jit(ott), (x,))

    import jaxopt._src.isotonic as jaxopt_isotonic
    from jaxopt.isotonic import isotonic_l2_pav

    if jaxopt_isotonic.NUMBA_AVAILABLE and not hasattr(jaxopt_isotonic, "_bench_kernel"):
        # Under JAX >= 0.7 the callback receives read-only buffers, which jaxopt 0.8.5's numba
        # kernel rejects (TypingError: "Unknown attribute 'shape' of type readonly buffer"); a
        # writable copy of each row restores the path jaxopt intends. The kernel is looked up in
        # the module's globals at trace time, so replacing it there is enough.
        kernel = jaxopt_isotonic._isotonic_l2_pav_numba
        jaxopt_isotonic._bench_kernel = kernel
        jaxopt_isotonic._isotonic_l2_pav_numba = lambda y: kernel(np.array(y))

    # The isotonic step alone on the already sorted p = 2 mask problem s - eps*w (jaxopt has no
    # weights, so the magnitude shape runs the same unweighted problem on sorted |x|).
    a = np.abs(np.asarray(x)) if shape.magnitude else np.asarray(x)
    s = -np.sort(-a, axis=-1)
    w = (np.arange(shape.n) < k).astype(np.float32)
    iso = jax.jit(jax.vmap(lambda y: isotonic_l2_pav(y, increasing=False)))
    methods["jaxopt"] = Method(iso, (jnp.asarray(s - eps * w),))
    methods["scipy"] = Method(scipy_floor, (np.asarray(x), k, eps, shape.magnitude), jitted=False)
    return methods


def iteration_counts(shape: Shape, x: jax.Array, eps: float, p: float) -> tuple[str, bool]:
    """Max / mean iterations of ``core.solve_threshold`` over the rows, and whether all converged."""
    a = jnp.abs(x) if shape.magnitude else x
    batch = x.shape[:-1]
    solve = jax.jit(core.solve_threshold, static_argnames=("p", "magnitude"))
    sol = solve(
        a,
        jnp.ones(x.shape, bool),
        jnp.full(batch, shape.k, jnp.int32),
        jnp.full(batch, eps, x.dtype),
        p=p,
        magnitude=shape.magnitude,
    )
    its = np.asarray(sol.iterations)
    return f"{its.max()} / {its.mean():.1f}", bool(np.all(np.asarray(sol.converged)))


def max_diff(a: Any, b: Any) -> str:
    return f"{float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))):.1e}"


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few repetitions")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="dry run of the script itself: one 64x64 k=2 shape, lax.top_k and the default fwd",
    )
    parser.add_argument(
        "--shapes",
        default="",
        help="comma-separated shape names: " + ",".join(s.name for s in SHAPES),
    )
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--max-call", type=float, default=60.0, help="one call only past this (s)")
    parser.add_argument(
        "--jaxopt-python", action="store_true", help="run jaxopt even without numba (very slow)"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated method keys to skip: " + ",".join(m for m, _ in METHODS),
    )
    args = parser.parse_args()
    eps = args.epsilon
    wanted = {s for s in args.shapes.split(",") if s}
    unknown = wanted - {s.name for s in SHAPES}
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}")
    shapes = [s for s in SHAPES if not wanted or s.name in wanted]
    skip = {m for m in args.skip.split(",") if m}
    if args.tiny:
        shapes = [Shape("tiny", "tiny router", 64, 64, 2)]
        skip |= {key for key, _ in METHODS} - {"topk", "fwd"}
        args.quick = True
    fast_repeats, fast_budget = (5, 1.0) if args.quick else (60, 12.0)
    slow_repeats, slow_budget = (1, 0.0) if args.quick else (5, 8.0)
    ott_iterations = 100 if args.quick else 2000
    has_numba = importlib.util.find_spec("numba") is not None
    log(
        f"jax {jax.__version__}, backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"float32, epsilon={eps}, numba for jaxopt: {has_numba}"
    )

    cells: dict[str, dict[str, str]] = {m: {} for m, _ in METHODS}
    extra: dict[str, dict[str, str]] = {}  # iteration counts and agreement checks per shape
    speed: dict[str, dict[str, str]] = {"ott": {}, "jaxopt": {}}
    notes: list[str] = []
    for shape in shapes:
        log(f"== {shape.name}: {shape.rows}x{shape.n}, k={shape.k}")
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((shape.rows, shape.n), dtype=np.float32))
        t = jnp.asarray(rng.standard_normal((shape.rows, shape.n), dtype=np.float32))
        methods = build(shape, x, t, eps, ott_iterations, skip)
        fast = {key: m for key, m in methods.items() if key not in SLOW and key not in skip}
        log(f"   {', '.join(fast)} (interleaved) ...")
        times: dict[str, Timing] = timed_interleaved(fast, fast_repeats, fast_budget)
        for key, _ in METHODS:
            if key in skip:
                cells[key][shape.name] = "not run"
                continue
            slow = key in SLOW
            repeats = slow_repeats if slow else fast_repeats
            budget = slow_budget if slow else fast_budget
            if key == "jaxopt" and not (has_numba or args.jaxopt_python):
                cells[key][shape.name] = "skipped¹"
                if shape is shapes[0]:
                    notes.append(
                        "jaxopt: not run, numba is not installed: jaxopt then runs its PAV in pure "
                        "Python, ~100 s per call on 4096×64 or 256×1000 (--jaxopt-python to force)"
                    )
                continue
            if slow:
                log(f"   {key} ...")
                try:
                    times[key] = timed(methods[key], slow, repeats, budget, args.max_call)
                except Exception as err:  # a peer that does not run in this environment
                    cells[key][shape.name] = "failed¹"
                    notes.append(
                        f"{shape.name} / {key}: {type(err).__name__}: {str(err).splitlines()[0]}"
                    )
                    log(f"   {key}: failed: {err!r}"[:2000])
                    continue
            timing = times[key]
            if timing.note:
                notes.append(f"{shape.name} / {key}: {timing.note}")
            base = times["topk"].ms
            cell = (
                f"{timing.ms:.3g} ms"
                if key == "topk"
                else f"{timing.ms:.3g} ms ({timing.ms / base:.2f}×)"
            )
            if slow and timing.calls < 3:
                cell += f" [{timing.calls} call]"
            cells[key][shape.name] = cell
            log(f"   {key}: {cell}")
        ref = times.get("jvp")
        for peer in speed:
            tp = times.get(peer)
            if ref and tp:
                ratio = tp.ms / ref.ms
                speed[peer][shape.name] = f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.2g}×"
            else:
                speed[peer][shape.name] = "–"
        # Iteration counts and solver agreement (outside the timings, from the timed outputs).
        info: dict[str, str] = {}
        if not args.tiny:
            its, converged = iteration_counts(shape, x, eps, 4.0 / 3.0)
            its2, converged2 = iteration_counts(shape, x, eps, 2.0)
            info = {"its": its, "its2": its2, "converged": str(converged and converged2)}

        outputs = {key: timing.output for key, timing in times.items()}
        output = outputs.get
        default, p2 = output("fwd"), output("fwd2")
        if default is not None:
            info["support"] = f"{float(jnp.mean(jnp.sum(default != 0, axis=-1))):.1f}"
            if not shape.magnitude:
                sum_error = jnp.max(jnp.abs(jnp.sum(default, axis=-1) - shape.k))
                info["sum"] = f"{float(sum_error):.1e}"
            if output("pav") is not None:
                info["pav"] = max_diff(default, output("pav"))
        if p2 is not None:
            for key in ("dykstra", "scipy"):
                if output(key) is not None:
                    info[key] = max_diff(p2, output(key))
        extra[shape.name] = info

    header = (
        "| method | " + " | ".join(f"{s.label} {s.rows}×{s.n:,} k={s.k:,}" for s in shapes) + " |"
    )
    print(header)
    print("|---|" + "---:|" * len(shapes))
    for key, label in METHODS:
        print(f"| {label} | " + " | ".join(cells[key].get(s.name, "–") for s in shapes) + " |")
    for peer, label in (("ott", "ott-jax"), ("jaxopt", "jaxopt")):
        print(
            f"| {label} time ÷ default fwd+JVP time | "
            + " | ".join(speed[peer].get(s.name, "–") for s in shapes)
            + " |"
        )
    print()
    rows = [
        ("its", "default solver iterations (p=4/3), max / mean over rows"),
        ("its2", "threshold solver iterations (p=2), max / mean over rows"),
        ("converged", "threshold solver: all rows converged"),
        ("support", "mean non-zeros per row (default)"),
        ("sum", "max \\|Σ mask − k\\| (default)"),
        ("pav", "max \\|default − PAV\\| (p=4/3)"),
        ("dykstra", "max \\|threshold − Dykstra\\| (p=2)"),
        ("scipy", "max \\|threshold − scipy floor\\| (p=2)"),
    ]
    print("| check | " + " | ".join(s.name for s in shapes) + " |")
    print("|---|" + "---:|" * len(shapes))
    for key, label in rows:
        print(f"| {label} | " + " | ".join(extra[s.name].get(key, "–") for s in shapes) + " |")
    print()
    for note in notes:
        print(f"¹ {note}  ")
    print(
        f"ott-jax: `topk_mask(x, k=k, epsilon={eps}, squashing_fun=identity)` (absolute epsilon, "
        f"Sinkhorn defaults threshold 1e-3, max_iterations {ott_iterations}); a different "
        "(entropic) operator, VJP only, so its forward is compared with our forward+JVP.  "
    )
    if has_numba:
        print(
            "jaxopt: its numba kernel fails under JAX 0.10 on read-only callback buffers "
            "(numba TypingError); the bench hands it a writable copy of each row.  "
        )
    log(f"numba importable (jaxopt's fast path): {has_numba}")


if __name__ == "__main__":
    main()
