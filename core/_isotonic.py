r"""Isotonic regression on the device: exact pool-adjacent-violators (PAV) and Dykstra.

Both solve the decreasing problem ``argmin_{v_1 >= ... >= v_n} sum_i w_i (y_i - v_i)^2`` on the last
axis, batched, in pure XLA control flow -- no host callback, so the same code runs on CPU, GPU and
TPU. The PAV takes caller-defined block statistics, so other separable problems (the soft
sort/rank projections, the sparse top-k block problems of :mod:`core._sparse_isotonic`) reuse it.

- PAV is a single ``lax.while_loop`` over a stack of blocks (at most ``2n`` steps, each O(1) work per
  row); rows run one after another on the CPU and in lock-step (``vmap``) on accelerators. It is
  exact and returns the block of every entry.
- Dykstra alternates the projections onto the two sets of disjoint pair constraints (even pairs, odd
  pairs), each closed-form and fully parallel; it stops at a tolerance or an iteration cap and reports
  both. It needs about ``m^2`` iterations for a pooled block of size ``m``, so it is accurate only when
  pooled blocks are small.

References:
    M. Blondel, O. Teboul, Q. Berthet, J. Djolonga. *Fast Differentiable Sorting and Ranking.*
    ICML 2020. M. E. Sander et al. *Fast, Differentiable and Sparse Top-k.* ICML 2023.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from core._rows import as_float_array, row_lengths, safe_divide, valid_entries
from core._units import exponent, scale_by_power_of_two

Stats = Any  # a pytree of arrays whose leading axis indexes blocks (or entries)


class PavSolution(NamedTuple):
    """One row's PAV result: the value of every entry, its block index and the loop's step count."""

    values: Array
    blocks: Array
    iterations: Array


class DykstraSolution(NamedTuple):
    """Dykstra's approximate solution with its iteration count and convergence flag per row."""

    values: Array
    iterations: Array
    converged: Array


# Scalar-index reads and writes as dynamic (update-)slices rather than gather/scatter, so that XLA
# updates the PAV stack in place (see `pav_decreasing` for what else that takes).
def _at(leaf: Array, index: Array) -> Array:
    return jax.lax.dynamic_index_in_dim(leaf, index, axis=0, keepdims=False)


def _take(tree: Stats, index: Array) -> Stats:
    return jax.tree.map(lambda leaf: _at(leaf, index), tree)


def _set(leaf: Array, index: Array, value: Array) -> Array:
    return jax.lax.dynamic_update_index_in_dim(leaf, value.astype(leaf.dtype), index, axis=0)


def _put(tree: Stats, index: Array, item: Stats) -> Stats:
    return jax.tree.map(lambda leaf, new: _set(leaf, index, new), tree, item)


def pav_decreasing(
    singleton_stats: Stats,
    merge: Callable[[Stats, Stats], Stats],
    block_value: Callable[[Stats], Array],
    length: Array,
    pool: Callable[[Stats, Stats], Array] | None = None,
) -> PavSolution:
    """Exact PAV for one row with decreasing constraints and caller-defined block statistics.

    Args:
        singleton_stats: pytree of ``(n, ...)`` arrays, the statistics of each entry as its own block.
        merge: combines the statistics of two adjacent blocks (left, right) into one.
        block_value: the optimal common value of a block from its statistics (vectorised over the
            leading axis).
        length: number of real entries (a scalar int); entries past it are ignored.
        pool: optional ``pool(left_stats, right_stats) -> bool``, the pooling test computed from
            both blocks' statistics. The default, ``value(left) <= value(right)``, compares two
            rounded values; a caller whose value is a difference of terms of very different
            magnitudes (``z - w`` with ``|w| >> |z|``) compares the two terms' gaps instead.

    Adjacent blocks are pooled while the left value is not larger than the right one (ties pool).
    """
    singleton_values = block_value(singleton_stats)
    n = singleton_values.shape[0]
    dtype = singleton_values.dtype

    class State(NamedTuple):
        next_entry: Array
        top: Array
        values: Array
        starts: Array
        stats: Stats
        iterations: Array
        violated: Array  # the top two blocks must be pooled (read after the last write)

    def violated(top: Array, values: Array, stats: Stats) -> Array:
        left = jnp.maximum(top - 2, 0)
        right = jnp.maximum(top - 1, 0)
        if pool is None:
            return (top >= 2) & (_at(values, left) <= _at(values, right))
        return (top >= 2) & pool(_take(stats, left), _take(stats, right))

    def unfinished(s: State) -> Array:
        return (s.next_entry < length) | s.violated

    def step(s: State) -> State:
        merge_now = s.violated
        left = jnp.maximum(s.top - 2, 0)
        right = jnp.maximum(s.top - 1, 0)
        entry = jnp.minimum(s.next_entry, n - 1)

        # The new top block comes out of a `cond`: its outputs are materialised before the in-place
        # updates below. Computed inline, XLA fuses these reads of the stack into each buffer's
        # update, cannot update in place any more and copies the whole stack (O(n) per step).
        def pooled(_: None) -> tuple[Stats, Array, Array, Array]:
            merged = merge(_take(s.stats, left), _take(s.stats, right))
            return merged, block_value(merged), _at(s.starts, left), left

        def pushed(_: None) -> tuple[Stats, Array, Array, Array]:
            slot = jnp.minimum(s.top, n - 1)
            return _take(singleton_stats, entry), _at(singleton_values, entry), entry, slot

        new_stats, new_value, new_start, slot = jax.lax.cond(merge_now, pooled, pushed, None)
        top = jnp.where(merge_now, s.top - 1, s.top + 1)
        values = _set(s.values, slot, new_value)
        stats = _put(s.stats, slot, new_stats)
        return State(
            next_entry=jnp.where(merge_now, s.next_entry, s.next_entry + 1),
            top=top,
            values=values,
            starts=_set(s.starts, slot, new_start),
            stats=stats,
            iterations=s.iterations + 1,
            violated=violated(top, values, stats),
        )

    init = State(
        next_entry=jnp.zeros((), jnp.int32),
        top=jnp.zeros((), jnp.int32),
        values=jnp.zeros((n,), dtype),
        starts=jnp.zeros((n,), jnp.int32),
        stats=singleton_stats,
        iterations=jnp.zeros((), jnp.int32),
        violated=jnp.zeros((), bool),
    )
    final = jax.lax.while_loop(unfinished, step, init)
    # Entry j belongs to the block b with the largest start <= j: count the block starts up to j.
    is_start = (
        jnp.zeros((n,), jnp.int32)
        .at[final.starts]
        .add((jnp.arange(n) < final.top) & (jnp.arange(n) > 0), mode="drop")
    )
    blocks = jnp.cumsum(is_start)
    return PavSolution(final.values[blocks], blocks, final.iterations)


def map_rows(one_row: Callable[..., Any], *rows: Array) -> Any:
    """Apply a one-row PAV to every row (leading axis of each argument).

    On the CPU rows run one after another (``lax.map``): each PAV step then costs O(1), while the
    batched (vmapped) loop turns the stack's in-place updates into scatters that XLA copies, O(n)
    per step. Accelerators run the rows in lock-step with ``vmap`` instead.
    """
    if jax.default_backend() == "cpu":
        return jax.lax.map(lambda args: one_row(*args), rows)
    return jax.vmap(one_row)(*rows)


# ------------------------------------------------------------------------------ block statistics


def _l2_stats(y: Array, w: Array) -> Stats:
    return (w, y)  # total weight, weighted mean


def _l2_merge(a: Stats, b: Stats) -> Stats:
    wa, ma = a
    wb, mb = b
    w = wa + wb
    return (w, ma + safe_divide(wb * (mb - ma), w))


def _l2_value(stats: Stats) -> Array:
    return stats[1]


# ------------------------------------------------------------------------------------- Dykstra


def _pair_projection(v: Array, u: Array) -> Array:
    """Project consecutive pairs (v0, v1), (v2, v3), ... onto {a >= b} in the u-weighted norm."""
    a, b = v[..., 0::2], v[..., 1::2]
    ua, ub = u[..., 0::2], u[..., 1::2]
    mean = safe_divide(ua * a + ub * b, ua + ub)
    violated = b > a
    a = jnp.where(violated, mean, a)
    b = jnp.where(violated, mean, b)
    return jnp.stack([a, b], axis=-1).reshape(v.shape)


def _headroom(y: Array, valid: Array) -> Array:
    """``j >= 0`` that brings the row's largest ``|y|`` to at most ``2^100``, per row."""
    top = jnp.max(jnp.where(valid, jnp.abs(y), 0), axis=-1, keepdims=True)
    return jnp.maximum(exponent(top) - 100, 0)


def dykstra_decreasing(
    y: Array, weights: Array, valid: Array, *, tol: float | None = None, max_iter: int = 2000
) -> DykstraSolution:
    """Dykstra's alternating projections for the weighted decreasing isotonic problem, batched.

    Padded entries are replaced by a strictly decreasing tail below every real value, so they never
    pool with real entries. Stops for a row when one full cycle moves no entry by more than
    ``tol * max|y|`` (default ``tol``: 10 ulp of the dtype), or at ``max_iter`` cycles. A row near
    the top of the range is solved ``2^j`` times smaller (homogeneous), so the tail cannot overflow.
    """
    log2_scale = _headroom(y, valid)
    y = scale_by_power_of_two(y, -log2_scale)
    n = y.shape[-1]
    big = jnp.finfo(y.dtype).max
    low = jnp.min(jnp.where(valid, y, big), axis=-1, keepdims=True)
    top = jnp.max(jnp.where(valid, jnp.abs(y), 0), axis=-1, keepdims=True)
    scale = jnp.where(top > 0, top, 1)  # in the units of y (1 + max|y| stopped at once on 1e-9)
    low = jnp.where(jnp.any(valid, axis=-1, keepdims=True), low, 0)
    tail = low - scale * (1 + jnp.arange(n, dtype=y.dtype))
    z = jnp.where(valid, y, tail)
    u = jnp.where(valid, weights, 1)
    if n % 2 == 0:  # odd length: each pair set leaves one end free
        # A free entry below every value (the last real one need not be the smallest).
        z = jnp.concatenate([z, jnp.minimum(z[..., -1:], low) - scale], axis=-1)
        u = jnp.concatenate([u, jnp.ones_like(u[..., -1:])], axis=-1)
    tol_abs = (10 * float(jnp.finfo(y.dtype).eps) if tol is None else tol) * scale[..., 0]

    def project_even(v: Array) -> Array:
        return jnp.concatenate([_pair_projection(v[..., :-1], u[..., :-1]), v[..., -1:]], axis=-1)

    def project_odd(v: Array) -> Array:
        return jnp.concatenate([v[..., :1], _pair_projection(v[..., 1:], u[..., 1:])], axis=-1)

    class State(NamedTuple):
        x: Array
        p: Array
        q: Array
        iterations: Array
        converged: Array

    def unfinished(s: State) -> Array:
        return jnp.any(~s.converged) & (jnp.max(s.iterations) < max_iter)

    def cycle(s: State) -> State:
        y1 = project_even(s.x + s.p)
        p = s.x + s.p - y1
        x = project_odd(y1 + s.q)
        q = y1 + s.q - x
        moved = jnp.max(jnp.abs(x - s.x), axis=-1)
        active = ~s.converged
        keep = active[..., None]
        return State(
            x=jnp.where(keep, x, s.x),
            p=jnp.where(keep, p, s.p),
            q=jnp.where(keep, q, s.q),
            iterations=s.iterations + active.astype(jnp.int32),
            converged=s.converged | (moved <= tol_abs),
        )

    zeros = jnp.zeros_like(z)
    batch = y.shape[:-1]
    init = State(z, zeros, zeros, jnp.zeros(batch, jnp.int32), jnp.zeros(batch, bool))
    final = jax.lax.while_loop(unfinished, cycle, init)
    values = scale_by_power_of_two(final.x[..., :n], log2_scale)
    return DykstraSolution(values, final.iterations, final.converged)


# ------------------------------------------------------------------ public isotonic regression


def _solve_l2(y: Array, weights: Array, lengths: Array, solver: str) -> tuple[Array, Array]:
    """Decreasing weighted L2 isotonic regression and the block index of every entry."""
    valid = valid_entries(y, lengths)
    # Homogeneous: a row near the top of the range is solved 2^j times smaller (block means of
    # ±3e38 overflow); what that flushes is far below the row's resolution.
    log2_scale = _headroom(y, valid)
    y = scale_by_power_of_two(y, -log2_scale)
    if solver == "pav":
        flat_y = y.reshape(-1, y.shape[-1])
        flat_w = weights.reshape(-1, y.shape[-1])

        def one_row(y_row: Array, w_row: Array, length: Array) -> PavSolution:
            return pav_decreasing(_l2_stats(y_row, w_row), _l2_merge, _l2_value, length)

        sol = map_rows(one_row, flat_y, flat_w, lengths.reshape(-1))
        values, blocks = sol.values.reshape(y.shape), sol.blocks.reshape(y.shape)
    elif solver == "dykstra":
        values = dykstra_decreasing(y, weights, valid).values
        # Blocks of an approximate solution: equal up to a tolerance relative to the data's scale.
        top = jnp.max(jnp.where(valid, jnp.abs(y), 0), axis=-1, keepdims=True)
        scale = jnp.where(top > 0, top, 1)  # in the units of y
        jump = jnp.abs(jnp.diff(values, axis=-1)) > 1e3 * jnp.finfo(y.dtype).eps * scale
        blocks = jnp.concatenate(
            [jnp.zeros_like(lengths)[..., None], jnp.cumsum(jump, axis=-1, dtype=jnp.int32)],
            axis=-1,
        )
    else:
        raise ValueError(f"solver must be 'pav' or 'dykstra', got {solver!r}")
    return jnp.where(valid, scale_by_power_of_two(values, log2_scale), 0), blocks


def _segment_sum(values: Array, blocks: Array) -> Array:
    n = values.shape[-1]
    flat = jax.vmap(lambda v, b: jax.ops.segment_sum(v, b, num_segments=n))(
        values.reshape(-1, n), blocks.reshape(-1, n)
    )
    return flat.reshape(values.shape)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _isotonic(y: Array, weights: Array, lengths: Array, solver: str) -> Array:
    return _solve_l2(y, weights, lengths, solver)[0]


@_isotonic.defjvp
def _isotonic_jvp(
    solver: str, primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    y, weights, lengths = primals
    dy, dw, _ = tangents
    values, blocks = _solve_l2(y, weights, lengths, solver)
    valid = valid_entries(y, lengths)
    # v_B = sum_B w y / sum_B w, so dv_B = sum_B (w dy + dw (y - v)) / sum_B w on each block.
    numerator = jnp.where(valid, weights * dy + dw * (y - values), 0)
    total = _segment_sum(jnp.where(valid, weights, 0), blocks)
    per_block = safe_divide(_segment_sum(numerator, blocks), total)
    dv = jnp.take_along_axis(per_block, blocks, axis=-1)
    return values, jnp.where(valid, dv, 0)


@functools.partial(jax.jit, static_argnames=("increasing", "solver"))
def isotonic_regression(
    y: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    increasing: bool = False,
    solver: Literal["pav", "dykstra"] = "pav",
    lengths: ArrayLike | None = None,
) -> Array:
    r"""Weighted isotonic regression on the last axis, batched, differentiable.

    .. math::

        \arg\min_{v_1 \ge v_2 \ge \dots \ge v_n} \sum_i w_i (y_i - v_i)^2
        \quad(\text{or } v_1 \le \dots \le v_n \text{ with ``increasing=True``})

    Args:
        y: ``(..., n)`` values.
        weights: optional positive weights broadcastable to ``y`` (default 1).
        increasing: solve the non-decreasing problem instead (static).
        solver: ``"pav"`` (exact, on the device) or ``"dykstra"`` (approximate; see the module
            docstring for its accuracy) -- static.
        lengths: optional ``(...)`` number of real entries per row; the tail gets 0.

    Returns:
        The fitted values, shape and dtype of ``y``. JVP (and, by transposition, VJP) with respect to
        ``y`` and ``weights``: the weighted block average of the tangent.

    Example:
        >>> isotonic_regression(jnp.array([1.0, 3.0, 2.0, 0.0]))
        Array([2., 2., 2., 0.], dtype=float32)
    """
    y_ = as_float_array(y)
    w_ = jnp.broadcast_to(jnp.ones((), y_.dtype) if weights is None else weights, y_.shape)
    w_ = w_.astype(y_.dtype)
    lengths_ = row_lengths(y_, lengths)
    if increasing:
        return -_isotonic(-y_, w_, lengths_, str(solver))
    return _isotonic(y_, w_, lengths_, str(solver))
