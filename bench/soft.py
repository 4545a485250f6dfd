"""SOFT top-k benchmark: soft_topk_mask (forward, forward+JVP) vs jax.lax.top_k and ott-jax.

Run: ``python bench/soft.py`` (float32, CPU). Every time is measured in this one process, as the median
of repeated calls of a jitted function on the same array after a warm-up call (the baseline and our
operator in interleaved rounds, median over the rounds). Ratios are to
``jax.lax.top_k`` on the same array. ott-jax ``soft_sort.topk_mask`` runs with the identity squashing
function, the same epsilon and a tolerance tight enough that its mask matches ours to the reported
max-abs difference. The sorted variant's Sinkhorn iteration counts are reported per shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core  # noqa: E402

SHAPES = [(4096, 64, 2), (256, 1000, 5), (256, 1024, 128), (16, 16384, 2048)]


def timed(fn: Callable[[], Any], repeats: int, budget: float = 3.0) -> float:
    """Median wall time (ms) of ``fn()`` after one warm-up call; stops early past ``budget`` s."""
    jax.block_until_ready(fn())
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ott-threshold", type=float, default=1e-4)
    parser.add_argument("--no-ott", action="store_true")
    parser.add_argument("--sorted-rows", type=int, default=8)
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions, no ott, no sorted variant"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="dry run of the script itself: one 64x64 k=2 shape"
    )
    args = parser.parse_args()
    shapes = SHAPES
    if args.quick or args.tiny:
        args.repeats, args.rounds, args.no_ott, args.sorted_rows = 5, 2, True, 0
    if args.tiny:
        shapes, args.repeats, args.rounds = [(64, 64, 2)], 2, 1
    eps = args.epsilon
    device = jax.devices()[0].device_kind
    print(f"jax {jax.__version__}, backend {jax.default_backend()} ({device}), float32, eps={eps}")
    header = (
        "| shape (B×n) | k | lax.top_k ms | soft fwd ms (×top_k) | soft fwd+JVP ms (×top_k) | "
        "Newton its (max) | ott topk_mask ms | ott / soft fwd+JVP | max |soft − ott| |"
    )
    print(header)
    print("|" + "---|" * 9)
    sorted_lines = []
    for b, n, k in shapes:
        x = jax.random.normal(jax.random.key(0), (b, n), jnp.float32)
        v = jax.random.normal(jax.random.key(1), (b, n), jnp.float32)
        topk = jax.jit(lambda z, k=k: jax.lax.top_k(z, k))
        fwd = jax.jit(lambda z, k=k: core.soft_topk_mask(z, k, epsilon=eps, return_info=True))
        jvp = jax.jit(
            lambda z, t, k=k: jax.jvp(lambda y: core.soft_topk_mask(y, k, epsilon=eps), (z,), (t,))
        )
        # Interleaved rounds, median of the rounds' medians: a change of load on the shared
        # machine then hits the baseline and our operator alike.
        rounds = [
            (
                timed(partial(topk, x), args.repeats, budget=1.0),
                timed(partial(fwd, x), args.repeats, budget=1.0),
                timed(partial(jvp, x, v), args.repeats, budget=1.0),
            )
            for _ in range(args.rounds)
        ]
        t_topk, t_fwd, t_jvp = (statistics.median(column) for column in zip(*rounds, strict=True))
        mask, info = fwd(x)
        its = int(jnp.max(info.iterations))
        assert bool(jnp.all(info.converged))
        ott_cell, ratio_cell, diff_cell = "–", "–", "–"
        if not args.no_ott:
            from ott.tools import soft_sort

            def ott_mask(z: jax.Array, k: int = k) -> jax.Array:
                return soft_sort.topk_mask(
                    z,
                    k=k,
                    squashing_fun=lambda y: y,
                    epsilon=eps,
                    threshold=args.ott_threshold,
                    max_iterations=20_000,
                )

            ott = jax.jit(ott_mask)
            t_ott = timed(partial(ott, x), 2, budget=0.0)
            diff = float(jnp.max(jnp.abs(ott(x) - mask)))
            ott_cell = f"{t_ott:.1f}"
            ratio_cell = f"{t_ott / t_jvp:.0f}×"
            diff_cell = f"{diff:.1e}"
        print(
            f"| {b}×{n} | {k} | {t_topk:.3f} | {t_fwd:.3f} ({t_fwd / t_topk:.2f}×) | "
            f"{t_jvp:.3f} ({t_jvp / t_topk:.2f}×) | {its} | {ott_cell} | {ratio_cell} | {diff_cell} |",
            flush=True,
        )
        # Sorted variant: Sinkhorn iterations on a few rows, x scaled to the anchors' unit spacing.
        rows = min(b, args.sorted_rows)
        if not rows:
            pass
        elif n * (k + 1) * rows <= 2**26:
            out = core.soft_topk_sorted(x[:rows], k, epsilon=eps, rescale_cost=True, max_iter=5000)
            its_sorted = np.asarray(out.info.iterations)
            sorted_lines.append(
                f"| {b}×{n} | {k} | {rows} | {int(its_sorted.min())}–{int(its_sorted.max())} | "
                f"{bool(jnp.all(out.info.converged))} | {float(jnp.max(out.info.error)):.1e} |"
            )
        else:
            sorted_lines.append(
                f"| {b}×{n} | {k} | – | not run: n·(k+1) = {n * (k + 1):,} plan entries per row "
                "per iteration | – | – |"
            )
    print()
    print(
        "Sorted variant (soft_topk_sorted, rescale_cost=True, same epsilon, tol 1e-6, "
        "max_iter 5000): Sinkhorn iterations"
    )
    print("| shape | k | rows run | iterations (min–max) | converged | max error |")
    print("|---|---|---|---|---|---|")
    for line in sorted_lines:
        print(line)
    if not args.tiny:
        sort_and_rank(eps, args.repeats, with_ott=not args.no_ott)


SORT_SHAPES = [(256, 64), (64, 256), (16, 1024)]


def sort_and_rank(eps: float, repeats: int, *, with_ott: bool) -> None:
    """soft_sort / soft_rank (permutahedron projection, device PAV) vs jnp.sort and ott-jax.

    ott-jax's ``soft_sort.sort`` / ``ranks`` are a different regularisation (entropic OT onto n
    targets, O(n^2) per Sinkhorn iteration); they are timed as the peer offering the same service.
    """
    print()
    print(f"Soft sort and rank (l2, epsilon={eps}); ratios to jnp.sort on the same array")
    print(
        "| shape (B×n) | jnp.sort ms | soft_sort fwd ms (×) | soft_sort fwd+JVP ms (×) | "
        "soft_rank fwd+JVP ms (×) | ott sort ms | ott ranks ms | ott sort / soft_sort fwd |"
    )
    print("|" + "---|" * 8)
    rng = np.random.default_rng(0)
    for b, n in SORT_SHAPES:
        x = jnp.asarray(rng.standard_normal((b, n)), jnp.float32)
        t = jnp.asarray(rng.standard_normal((b, n)), jnp.float32)
        base = timed(partial(jax.jit(jnp.sort), x), repeats)
        fwd = jax.jit(lambda z: core.soft_sort(z, epsilon=eps))
        sort_jvp = jax.jit(
            lambda z, d: jax.jvp(lambda v: core.soft_sort(v, epsilon=eps), (z,), (d,))
        )
        rank_jvp = jax.jit(
            lambda z, d: jax.jvp(lambda v: core.soft_rank(v, epsilon=eps), (z,), (d,))
        )
        ours = timed(partial(fwd, x), repeats)
        ours_jvp = timed(partial(sort_jvp, x, t), repeats)
        ours_rank = timed(partial(rank_jvp, x, t), repeats)
        ott_sort = ott_ranks = float("nan")
        if with_ott:
            from ott.tools import soft_sort as ott_soft_sort

            def identity(z: jax.Array) -> jax.Array:
                return z

            ott_sort = timed(
                partial(
                    jax.jit(lambda z: ott_soft_sort.sort(z, squashing_fun=identity, epsilon=eps)),
                    x,
                ),
                max(1, repeats // 10),
                budget=20.0,
            )
            ott_ranks = timed(
                partial(
                    jax.jit(lambda z: ott_soft_sort.ranks(z, squashing_fun=identity, epsilon=eps)),
                    x,
                ),
                max(1, repeats // 10),
                budget=20.0,
            )
        print(
            f"| {b}×{n} | {base:.3g} | {ours:.3g} ({ours / base:.1f}×) | "
            f"{ours_jvp:.3g} ({ours_jvp / base:.1f}×) | {ours_rank:.3g} ({ours_rank / base:.1f}×) | "
            f"{ott_sort:.3g} | {ott_ranks:.3g} | {ott_sort / ours:.0f}× |"
        )


if __name__ == "__main__":
    main()
