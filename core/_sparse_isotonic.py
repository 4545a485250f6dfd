r"""The sparse top-k threshold by the paper's route: sort, solve the isotonic block problem, read off.

Sander et al. (ICML 2023), after Blondel et al. (ICML 2020, Prop. 3), reduce both sparse
operators to one decreasing isotonic problem on the sorted scores ``s`` with the
top-k weights ``w = 1_k``, ``q = p / (p - 1)`` and ``r = q - 1``:

.. math::

    v^\star = \underset{v_1 \ge \dots \ge v_n}{\text{argmin}}
        \sum_i \tfrac1q |s_i - v_i|^q + \varepsilon^{q-1} w_i \,(v_i \text{ (mask) or } v_i^2/2
        \text{ (magnitude)}),

whose value on a pooled block ``B`` solves ``sum_B sign(s - v)|s - v|^r = eps^r W (1 or v)``
(``W = sum_B w``). The threshold ``tau`` is ``v`` at sorted position ``k``; the operators'
outputs and derivatives are then the element-wise functions of :mod:`core._sparse`, shared with
the sort-free solver of :mod:`core._threshold` (which this route cross-checks).

Block values: closed forms for ``r = 1`` (a weighted mean) and ``r = 3`` (the monotone cubic of
:func:`core._threshold.cubic_block_root`, from running moments); any other ``r`` keeps the block as
an index range and bisects its root in the floats' order (at most 32 / 64 halvings to adjacent
floats, whatever its magnitude). PAV is exact; Dykstra (p = 2 only, :data:`core.SOLVER_P`) is the
paper's approximate GPU method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax import Array

from core._domain import solver_supports_p
from core._isotonic import (
    Stats,
    _l2_merge,
    _l2_stats,
    _l2_value,
    dykstra_decreasing,
    map_rows,
    pav_decreasing,
)
from core._rows import descending_order, key_midpoint
from core._threshold import cubic_block_root, exponent

__all__ = ["sorted_threshold"]


def _moments_merge(a: Stats, b: Stats) -> Stats:
    """Merge (count, mean, M2, M3, W) of two blocks (Chan et al.'s pairwise update, stable)."""
    na, mua, m2a, m3a, wa = a
    nb, mub, m2b, m3b, wb = b
    n = na + nb
    delta = mub - mua
    mu = mua + delta * nb / n
    m2 = m2a + m2b + delta * delta * na * nb / n
    m3 = (
        m3a
        + m3b
        + delta**3 * na * nb * (na - nb) / (n * n)
        + 3.0 * delta * (na * m2b - nb * m2a) / n
    )
    return (n, mu, m2, m3, wa + wb)


def _sparse_block_problem(
    s: Array, w: Array, eps: Array, r: float, magnitude: bool
) -> tuple[Stats, Callable[[Stats, Stats], Stats], Callable[[Stats], Array]]:
    """Statistics for ``argmin_{v dec} sum (1/q)|s - v|^q + eps^(q-1) w (v or v^2/2)``, q - 1 = r.

    The block value solves ``sum_B (s - v)|s - v|^(r-1) = eps^r W (1 or v)`` (``W = sum_B w``).
    """
    one = jnp.ones_like(s)
    if r == 1.0:
        if magnitude:  # weighted L2 of s / (1 + eps w) with weights 1 + eps w
            weights = one + eps * w
            return _l2_stats(s / weights, weights), _l2_merge, _l2_value
        return _l2_stats(s - eps * w, one), _l2_merge, _l2_value
    if r == 3.0:
        stats = (one, s, jnp.zeros_like(s), jnp.zeros_like(s), w)

        def cubic_value(st: Stats) -> Array:
            m, mu, m2, m3, weight = st
            return cubic_block_root(m, mu, m2, m3, weight, eps, magnitude)

        return stats, _moments_merge, cubic_value

    # General r: no finite statistics; a block is its index range, its root found by bisection.
    index = jnp.arange(s.shape[0], dtype=jnp.int32)
    big = jnp.finfo(s.dtype).max

    def range_merge(a: Stats, b: Stats) -> Stats:
        return (a[0], b[1], a[2] + b[2])

    def range_value(st: Stats) -> Array:
        return jnp.vectorize(_range_root)(st[0], st[1], st[2])

    def _range_root(start: Array, end: Array, weight: Array) -> Array:
        inside = (index >= start) & (index <= end)
        count = jnp.sum(inside).astype(s.dtype)
        s_max = jnp.max(jnp.where(inside, s, -big))
        s_min = jnp.min(jnp.where(inside, s, big))
        lo = jnp.zeros_like(s_max) if magnitude else s_min - eps * (weight / count) ** (1 / r)
        hi = jnp.maximum(s_max, lo)

        def excess(v: Array) -> Array:
            gap = s - v
            powered = jnp.sign(gap) * jnp.abs(gap) ** r
            return jnp.sum(jnp.where(inside, powered, 0)) - eps**r * weight * (
                v if magnitude else 1
            )

        def bisect(_: int, bracket: tuple[Array, Array]) -> tuple[Array, Array]:
            lo, hi = bracket
            # Halving the floats in between, not the interval: a root near 1e-18 (a large eps)
            # is reached in at most 32 (64) steps, where halving [0, 1] needs 60 (120) and more.
            mid = key_midpoint(lo, hi)
            above = excess(mid) > 0
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        iterations = 40 if s.dtype == jnp.float32 else 72
        lo, hi = jax.lax.fori_loop(0, iterations, bisect, (lo, hi))
        # A block without weight is a singleton (sorted scores never pool among themselves): its
        # value is its score exactly, which bisection would leave an ulp away (and on the wrong
        # side of the next entry's threshold test).
        return jnp.where(weight == 0, s_max, 0.5 * (lo + hi))

    return (index, index, w), range_merge, range_value


def sorted_threshold(
    a: Array,
    valid: Array,
    k: Array,
    eps: Array,
    *,
    p: float,
    magnitude: bool,
    method: Literal["pav", "dykstra"],
) -> Array:
    """The sparse top-k threshold ``tau`` by the paper's route: sort, isotonic regression, read off.

    ``tau`` is the isotonic solution at sorted position ``k`` (0-based): the pooled block always
    contains ranks ``k`` and ``k + 1``, and without pooling that entry is a zero singleton.
    """
    if not solver_supports_p(method, p):
        raise ValueError(f"solver={method!r} does not support p={p} (see core.SOLVER_P)")
    r = exponent(p)
    order = descending_order(a, valid)
    s = jnp.take_along_axis(jnp.where(valid, a, 0), order, axis=-1)
    s_valid = jnp.take_along_axis(valid, order, axis=-1)
    rank = jnp.arange(a.shape[-1], dtype=jnp.int32)
    w = (rank < k[..., None]).astype(a.dtype)
    length = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    if method == "pav":
        flat = (s.reshape(-1, s.shape[-1]), w.reshape(-1, s.shape[-1]))

        def one_row(s_row: Array, w_row: Array, eps_row: Array, length_row: Array) -> Array:
            stats, merge, value = _sparse_block_problem(s_row, w_row, eps_row, r, magnitude)
            return pav_decreasing(stats, merge, value, length_row).values

        v = map_rows(one_row, *flat, eps.reshape(-1), length.reshape(-1)).reshape(s.shape)
    elif method == "dykstra":
        e = eps[..., None]
        if magnitude:
            weights = 1 + e * w
            v = dykstra_decreasing(s / weights, weights, s_valid).values
        else:
            v = dykstra_decreasing(s - e * w, jnp.ones_like(s), s_valid).values
    else:
        raise ValueError(f"unknown isotonic method {method!r}")
    position = jnp.clip(k, 0, jnp.maximum(length - 1, 0))
    tau = jnp.take_along_axis(v, position[..., None], axis=-1)[..., 0]
    if magnitude:  # every non-zero is a top: the sort-free solver's convention tau = 0
        nonzero = jnp.sum(valid & (a > 0), axis=-1)
        tau = jnp.where(k >= nonzero, 0, tau)
    return tau
