r"""Sort-free solver for the sparse top-k operators: one threshold ``tau`` per row.

For ``w = 1_k`` the permutahedron is the hypersimplex and the isotonic reduction pools a single block
around rank ``k``, so both operators are element-wise functions of ``x`` and one scalar ``tau`` per
row (the isotonic reduction of Sander et al., ICML 2023, built on Blondel et al., ICML 2020,
Prop. 3). With ``r = 1/(p - 1)``:

- mask:       ``y_i = clip(((x_i - tau)_+ / eps)^r, 0, 1)``,  ``tau`` solves ``sum_i y_i = k``;
- magnitude:  ``u_i = ((|x_i| - tau)_+ / eps)^r``,  ``tau > 0`` solves ``sum_i clip(u_i / tau, 0, 1) = k``.

Each entry is a *top* (output saturated), in the pooled *block*, or a *zero*. Given that partition the
equation restricted to the block has a closed-form root for ``p = 2`` and ``p = 4/3`` (a monotone
cubic) and a Newton step otherwise. The solver alternates: evaluate the partition at ``tau``, shrink
the bracket, jump to the block root of that partition if it lies inside the bracket (else bisect),
and stops when the partition reproduces itself -- at which point ``tau`` is the exact root, not a
bisection approximation (this avoids the magnitude operator's conditioning trap).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import ndtri

from core._lockstep import iterate_rows
from core._rows import key_midpoint, key_span, normal_upper_quantile, safe_divide


class ThresholdSolution(NamedTuple):
    """The threshold of every row and how the solver got there."""

    tau: Array
    iterations: Array
    converged: Array


def exponent(p: float) -> float:
    """``r = 1 / (p - 1)``, snapped to the closed-form cases ``p = 2`` (r = 1) and ``p = 4/3`` (r = 3)."""
    if p <= 1:
        raise ValueError(f"p must be > 1, got {p}")
    if abs(p - 2.0) < 1e-9:
        return 1.0
    if abs(p - 4.0 / 3.0) < 1e-9:
        return 3.0
    return 1.0 / (p - 1.0)


def power(z: Array, r: float) -> Array:
    """``z ** r`` for ``z >= 0`` without NaN (or infinite derivatives) at 0."""
    if r == 1.0:
        return z
    if r == 3.0:
        return z * z * z
    positive = z > 0
    return jnp.where(positive, jnp.where(positive, z, 1) ** r, 0)


def _cbrt(v: Array) -> Array:
    return jnp.sign(v) * jnp.abs(v) ** (1.0 / 3.0)


def _depressed_cubic_root(p_coef: Array, q_coef: Array) -> Array:
    """The real root of ``t^3 + P t + Q = 0`` for ``P >= 0`` (monotone, one real root).

    Cardano with the larger-magnitude cube root (no cancellation inside the root), then two Newton
    steps to remove the cancellation of ``u - P / (3u)`` when ``P^3 >> Q^2``. Solved for
    ``t / lam`` with ``lam = max(sqrt(P), cbrt(|Q|))``, whose coefficients are at most 1: ``P^3``
    overflows float32 from ``P ~ 2^42`` (a large ``eps^3 W``).
    """
    lam = jnp.maximum(jnp.sqrt(p_coef), _cbrt(jnp.abs(q_coef)))
    lam = jnp.where(lam > 0, lam, 1)
    p_coef = p_coef / (lam * lam)
    q_coef = q_coef / lam / lam / lam
    disc = jnp.sqrt(0.25 * q_coef * q_coef + (p_coef / 3.0) ** 3)
    u = _cbrt(-0.5 * q_coef - jnp.where(q_coef >= 0, disc, -disc))
    t = u - safe_divide(p_coef, 3.0 * u)
    for _ in range(2):
        slope = 3.0 * t * t + p_coef
        t = t - safe_divide(t * t * t + p_coef * t + q_coef, slope)
    return t * lam


def cubic_block_root(
    m: Array, mu: Array, m2: Array, m3: Array, weight: Array, eps: Array, magnitude: bool
) -> Array:
    """Block root for p = 4/3 from the block's size, mean and centred moments ``M2``, ``M3``.

    Solves ``sum_B (a - tau)^3 = eps^3 W (tau if magnitude else 1)``; with ``d = a - mu`` and
    ``t = tau - mu`` it is the monotone depressed cubic ``m t^3 + (3 M2 + c1) t + c0 - M3 = 0``.
    """
    e3w = eps**3 * weight
    c1 = e3w if magnitude else jnp.zeros_like(e3w)
    c0 = e3w * mu if magnitude else e3w
    return mu + _depressed_cubic_root(safe_divide(3.0 * m2 + c1, m), safe_divide(c0 - m3, m))


class _Partition(NamedTuple):
    n_top: Array
    n_block: Array
    total: Array  # sum_i of the clipped outputs (the left side of the equation)
    candidate: Array  # root of the equation restricted to this partition's block (or a Newton step)


def _partition(
    a: Array, valid: Array, tau: Array, k: Array, eps: Array, r: float, magnitude: bool
) -> _Partition:
    """Evaluate the partition at ``tau`` and the block root of that partition (rows on axis -1)."""
    t = tau[..., None]
    e = eps[..., None]
    z = jnp.maximum(a - t, 0) / e
    u = power(z, r)
    if magnitude:
        top = valid & (a > t) & (u >= t)
        block = valid & (a > t) & (u < t)
        ratio = safe_divide(u, jnp.broadcast_to(t, u.shape))
        total = jnp.sum(top, axis=-1, dtype=a.dtype) + jnp.sum(jnp.where(block, ratio, 0), axis=-1)
    else:
        top = valid & (z >= 1)
        block = valid & (a > t) & (z < 1)
        total = jnp.sum(top, axis=-1, dtype=a.dtype) + jnp.sum(jnp.where(block, u, 0), axis=-1)
    n_top = jnp.sum(top, axis=-1, dtype=jnp.int32)
    n_block = jnp.sum(block, axis=-1, dtype=jnp.int32)
    weight = (k - n_top).astype(a.dtype)  # the mass the block must carry
    candidate = _block_root(a, block, weight, tau, eps, r, magnitude)
    return _Partition(n_top, n_block, total, candidate)


def _block_root(
    a: Array, block: Array, weight: Array, tau: Array, eps: Array, r: float, magnitude: bool
) -> Array:
    """Root of ``sum_B ((a - tau) / eps)^r = W (tau if magnitude else 1)`` over a fixed block ``B``.

    Closed form for r = 1 and r = 3; for other r one Newton step from ``tau``. NaN if B is empty.
    """
    m = jnp.sum(block, axis=-1).astype(a.dtype)
    if r == 1.0:
        block_sum = jnp.sum(jnp.where(block, a, 0), axis=-1)
        if magnitude:  # sum_B (a - tau) / eps = W tau
            root = safe_divide(block_sum, m + eps * weight)
        else:  # sum_B (a - tau) / eps = W
            root = safe_divide(block_sum - eps * weight, m)
    elif r == 3.0:
        mu = safe_divide(jnp.sum(jnp.where(block, a, 0), axis=-1), m)
        d = jnp.where(block, a - mu[..., None], 0)
        m2 = jnp.sum(d * d, axis=-1)
        m3 = jnp.sum(d * d * d, axis=-1)
        root = cubic_block_root(m, mu, m2, m3, weight, eps, magnitude)
    else:  # one Newton step on  sum_B z^r - W (tau if magnitude else 1) = 0
        z = jnp.maximum(a - tau[..., None], 0) / eps[..., None]
        residual = jnp.sum(jnp.where(block, power(z, r), 0), axis=-1)
        residual = residual - weight * (tau if magnitude else 1.0)
        slope = jnp.sum(jnp.where(block, (r / eps[..., None]) * power(z, r - 1.0), 0), axis=-1)
        slope = slope + (weight if magnitude else 0.0)
        root = tau + safe_divide(residual, slope)
    return jnp.where(m > 0, root, jnp.nan)


def _quantile_guess(a: Array, valid: Array, k: Array, eps: Array, magnitude: bool) -> Array:
    """A first ``tau`` from two moments: the ``1 - k/n`` quantile of a normal fit to the row.

    The root lies in ``[x_(k) - eps, x_(k+1)]`` (mask); for roughly bell-shaped scores this guess
    lands within a few order statistics of it, so the exact partition is found in a few steps
    instead of the ``log2(range / gap)`` steps bisection from the whole range would take. Any
    guess is safe: the bracket keeps the iteration exact for arbitrary data.
    """
    count = jnp.maximum(jnp.sum(valid, axis=-1), 1).astype(a.dtype)
    kf = k.astype(a.dtype)
    if magnitude:  # |x| of a centred normal: sigma from the second moment, a two-sided tail
        sigma = jnp.sqrt(jnp.sum(jnp.where(valid, a * a, 0), axis=-1) / count)
        tail = jnp.clip((kf + 0.5) / (2 * count), 1e-7, 0.5)
        return sigma * ndtri(1 - tail)
    return normal_upper_quantile(a, valid, kf + 0.5) - 0.5 * eps


def _row_extremes(a: Array, valid: Array, length: Array) -> tuple[Array, Array]:
    """The largest and the smallest real entry of each row (both 0 for an empty row)."""
    big = jnp.finfo(a.dtype).max
    top = jnp.max(jnp.where(valid, a, -big), axis=-1)
    bottom = jnp.min(jnp.where(valid, a, big), axis=-1)
    return jnp.where(length > 0, top, 0), jnp.where(length > 0, bottom, 0)


def trivial_mask_threshold(x: Array, valid: Array, k: Array, eps: Array) -> Array:
    """The mask's ``tau`` for ``k = 0`` (the largest entry) and ``k = length`` (the smallest minus
    ``eps``): the bracket :func:`solve_threshold` sets those rows to."""
    top, bottom = _row_extremes(x, valid, jnp.sum(valid, axis=-1))
    return jnp.where(k == 0, top, bottom - eps)


def solve_threshold(
    a: Array,
    valid: Array,
    k: Array,
    eps: Array,
    *,
    p: float,
    magnitude: bool,
    max_iter: int = 100,
) -> ThresholdSolution:
    """Solve for ``tau`` row by row (all rows at once); ``a = |x|`` for the magnitude operator.

    ``a``: ``(..., n)`` scores; ``valid``: mask of real entries; ``k``: int ``(...)`` already clipped to
    ``[0, length]``; ``eps``: ``(...)``. Rows whose answer is trivial (k = 0, k = length, or for the
    magnitude k at least the number of non-zeros) are set directly.
    """
    r = exponent(p)
    dtype = a.dtype
    length = jnp.sum(valid, axis=-1)
    a_max, a_min = _row_extremes(a, valid, length)
    if magnitude:
        lo = jnp.zeros_like(a_max)
        hi = a_max
        nonzero = jnp.sum(valid & (a > 0), axis=-1)
        trivial_tau = jnp.where(k >= nonzero, lo, hi)
        trivial = (k == 0) | (k >= nonzero)
    else:
        lo = a_min - eps
        hi = a_max
        trivial_tau = jnp.where(k == 0, hi, lo)
        trivial = (k == 0) | (k >= length)
    tau0 = _quantile_guess(a, valid, k, eps, magnitude)
    # A guess beyond the data (short rows, heavy tails) is pulled inside: the root of the mask lies
    # in [x_(k) - eps, x_(k+1)], so just below the largest score is the natural fallback.
    below_top = jnp.maximum(hi - eps, 0.5 * (lo + hi))
    tau0 = jnp.where(tau0 >= hi, below_top, jnp.where(tau0 <= lo, 0.5 * (lo + hi), tau0))
    tol = 4 * jnp.finfo(dtype).eps * (jnp.maximum(jnp.abs(a_max), jnp.abs(a_min)) + eps)

    class State(NamedTuple):
        tau: Array
        lo: Array
        hi: Array
        excess_lo: Array  # S(lo) - k >= 0
        excess_hi: Array  # S(hi) - k <= 0
        last_side: Array  # +1 if the last step moved lo, -1 if hi (for the Illinois rule)
        edge_excess: Array  # (..., 2): |S - k| measured at lo / hi (inf for the initial bracket)
        n_top: Array
        n_block: Array
        done: Array
        iterations: Array

    kf = k.astype(dtype)
    sum_tol = 16 * jnp.finfo(dtype).eps * jnp.maximum(kf, 1)
    total_at_lo = (nonzero if magnitude else length).astype(dtype)
    minus_one = jnp.full(k.shape, -1, jnp.int32)
    init = State(
        tau=jnp.where(trivial, trivial_tau, tau0),
        lo=lo,
        hi=hi,
        excess_lo=total_at_lo - kf,
        excess_hi=-kf,
        last_side=jnp.zeros(k.shape, jnp.int32),
        edge_excess=jnp.full((*k.shape, 2), jnp.inf, dtype),
        n_top=minus_one,
        n_block=minus_one,
        done=trivial,
        iterations=jnp.zeros(k.shape, jnp.int32),
    )

    class Rows(NamedTuple):
        a: Array
        valid: Array
        k: Array
        eps: Array
        kf: Array
        tol: Array
        sum_tol: Array

    def unfinished(s: State) -> Array:
        return ~s.done & (s.iterations < max_iter)

    def step(s: State, rows: Rows) -> State:
        a, valid, k, eps, kf, tol, sum_tol = rows
        active = unfinished(s)
        part = _partition(a, valid, s.tau, k, eps, r, magnitude)
        excess = part.total - kf
        exact = excess == 0
        same = (part.n_top == s.n_top) & (part.n_block == s.n_block)
        if magnitude:  # u / tau: tau matters relative to itself (it may be far below max |x|)
            tol = 4 * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(part.candidate), jnp.abs(s.tau))
        close = jnp.abs(part.candidate - s.tau) <= tol
        settled = same & close
        moves_lo = excess > 0
        moves_hi = excess < 0
        lo = jnp.where(moves_lo, s.tau, s.lo)
        hi = jnp.where(moves_hi, s.tau, s.hi)
        side = jnp.where(moves_lo, 1, jnp.where(moves_hi, -1, 0)).astype(jnp.int32)
        # Illinois: an end that survives two steps in a row gets its excess halved, so the false
        # position keeps superlinear convergence instead of creeping from one side.
        excess_lo = jnp.where(
            moves_lo, excess, jnp.where(side == s.last_side, 0.5, 1) * s.excess_lo
        )
        excess_hi = jnp.where(
            moves_hi, excess, jnp.where(side == s.last_side, 0.5, 1) * s.excess_hi
        )
        inside = (part.candidate > lo) & (part.candidate < hi)
        share = safe_divide(excess_lo, excess_lo - excess_hi)
        false_position = lo + jnp.clip(share, 0.0, 1.0) * (hi - lo)
        # A row still open after 12 steps with a bracket over many binades (a root near 1e-9
        # inside ±1e30) is halved in the floats' order: at most 32 (64) more steps, where halving
        # values or false position creep.
        wide = (key_span(lo, hi) > 2 ** (jnp.finfo(dtype).nmant + 3)) & (s.iterations >= 12)
        halfway = key_midpoint(lo, hi)
        if magnitude:  # tau > 0 divides: a subnormal tau would read as 0
            halfway = jnp.maximum(halfway, jnp.finfo(dtype).tiny)
        mid = jnp.where(wide, halfway, 0.5 * (lo + hi))
        regula = (false_position > lo) & (false_position < hi) & ~wide
        fallback = jnp.where(regula, false_position, mid)
        collapsed = (mid <= lo) | (mid >= hi)
        # A block root on the bracket's edge (within rounding) is the root at a kink of the sum,
        # where float rounding keeps the partitions on both sides from ever reproducing.
        measured = jnp.stack([moves_lo, moves_hi], axis=-1)
        edge_excess = jnp.where(measured, jnp.abs(excess)[..., None], s.edge_excess)
        on_root = edge_excess <= sum_tol[..., None]
        at_edge = (on_root[..., 0] & (jnp.abs(part.candidate - lo) <= tol)) | (
            on_root[..., 1] & (jnp.abs(part.candidate - hi) <= tol)
        )
        nxt = jnp.where(inside | ((close | at_edge) & ~wide), part.candidate, fallback)
        finished = s.done | exact | settled | collapsed | at_edge
        new = State(
            tau=jnp.where(s.done | exact | settled | collapsed, s.tau, nxt),
            lo=lo,
            hi=hi,
            excess_lo=excess_lo,
            excess_hi=excess_hi,
            last_side=side,
            edge_excess=edge_excess,
            n_top=part.n_top,
            n_block=part.n_block,
            done=finished,
            iterations=s.iterations + active.astype(jnp.int32),
        )
        # Finished rows (also those filling the stragglers' batch) keep their state exactly.
        return jax.tree.map(
            lambda old, upd: jnp.where(
                active.reshape(active.shape + (1,) * (upd.ndim - 1)), upd, old
            ),
            s,
            new,
        )

    batch, n = k.shape, a.shape[-1]
    rows = Rows(
        a.reshape(-1, n),
        valid.reshape(-1, n),
        k.reshape(-1),
        eps.reshape(-1),
        kf.reshape(-1),
        tol.reshape(-1),
        sum_tol.reshape(-1),
    )
    flat = jax.tree.map(lambda leaf: leaf.reshape((-1, *leaf.shape[len(batch) :])), init)
    final = iterate_rows(step, flat, rows, unfinished=unfinished)
    final = jax.tree.map(lambda leaf: leaf.reshape((*batch, *leaf.shape[1:])), final)
    return ThresholdSolution(final.tau, final.iterations, final.done)
