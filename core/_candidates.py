r"""The sparse mask's threshold for small k: solve on the row's largest values, check, fall back.

Measured reason (bench/RESULTS.md, "Small k on main"): for k <= 16 the iterative threshold solver
pays several reductions over the whole row per iteration; reading the few largest values and
solving on them costs a fraction of that on the router shapes (4096x64 k = 1, 2; 4096x256 k = 8;
256x1000 k = 5). This is the ``"threshold"`` (default) solver's path for those rows; every other row
goes to :func:`core._threshold.solve_threshold`, and the output is :mod:`core._sparse`'s, from
``(x - shift) - tau`` whichever path found it (``shift = c_k`` here, 0 there).

Notation (shared/research/small_k.md): ``g(u) = clip(u_+^r, 0, 1)``, ``r = 1/(p - 1)``,
``S(tau) = sum_i g((x_i - tau)/eps)``, ``tau*`` the largest root of ``S(tau) = k``, ``c_1 >= c_2 >= ...``
the values of the row. ``min(c_k - eps, c_(k+1)) <= tau* < c_k``, and with ``S_j`` the sum over
``c_1..c_j`` alone and ``tau_j`` its largest root:

* **Check.** ``tau_j = tau*`` iff ``S_j(c_(j+1)) >= k`` (i.e. ``c_(j+1) <= tau_j``: no other entry
  reaches the output, so ``S(tau_j) = S_j(tau_j) = k``; otherwise ``S(tau_j) > k``). The first such
  ``j >= k`` is the support ``s``; at most ``K = 16`` (``CANDIDATES``) values are read.
* **Exact root.** On ``[c_(s+1), c_s)`` nothing joins or leaves the support; entry ``i`` is
  saturated (``z_i >= 1``) iff ``S_s(c_i - eps) <= k``, a prefix found by bisection. The pooled
  block's root is then closed form (``p = 2``: linear; ``p = 4/3``: the monotone cubic of
  :func:`core._threshold.cubic_block_root`). All of it is shifted by ``c_k``: the block lies
  within ``eps`` of it, so float cancellation does not grow with ``|x| / eps``. A row whose
  support is ``k`` (the hard case, ``c_k - c_(k+1) >= eps``) gets the middle of its flat piece
  ``[max(c_(k+1), c_k - 2 eps), c_k - eps]``, where every ``tau`` gives the same output: the k-th
  entry's ``z`` is then at least 1 after the rounding of ``c_k + tau``.
* **Fallback.** Rows that fail the check (support > K, repeated values for the chain, k > K) go
  to the general solver on a compacted batch.

Where the values come from (``jax.lax.platform_dependent``, fixed when lowering):

* CPU: a chain of masked maxima ``c_(j+1) = max{x_i : x_i < c_j}``, one reduction over the row
  each; a row stops at its first ``S_j(c_(j+1)) >= k`` and the last few rows finish on a
  compacted batch (:func:`core._lockstep.iterate_rows`). XLA's CPU ``top_k`` is a per-row
  ``partial_sort`` whose cost grows with K (a full sort in float64). The chain lists *distinct*
  values, so one count ``#{x_i > tau} = #{c_i > tau}`` per row rules out repeats above ``tau``
  (subnormal scores, which the device compares as 0, are repeats of 0 there).
* GPU/TPU: one ``lax.top_k(x, K + 1)`` (values with repeats; a sort below n = 1024 on GPU, flat in
  K) and every ``j`` checked at once: no data-dependent loop, no per-step host synchronisation.
  The only conditionals are "any small k" and the fallback switch.

Everything after the values works on ``K + 1`` separate ``(rows,)`` arrays ("columns"), so that
sums and picks over them are element-wise (a reduction over a 17-wide minor axis costs XLA's CPU
backend as much as one over the whole row).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
from jax import Array

from core._lockstep import iterate_rows
from core._rows import safe_divide
from core._threshold import cubic_block_root, power, trivial_mask_threshold

CANDIDATES = 16  # K: the support a row may have to be solved here (k <= K); K + 1 values are read

Solve = Callable[
    [Array, Array, Array, Array], Array
]  # (x, valid, k, eps) -> tau, the general solver


# ------------------------------------------------------------------------------------ candidates
# Candidates are kept as K + 1 separate (rows,) arrays, largest first: sums and picks over them are
# then element-wise (XLA's CPU backend fuses and vectorises those; a reduction over a 17-wide
# minor axis costs as much as one over the whole row).

Columns = tuple[Array, ...]
Source = Literal["platform", "chain", "top_k"]
T = TypeVar("T")


def _pick(columns: Columns, index: Array) -> Array:
    """``columns[index[row]][row]``, ``-inf`` past the last column."""
    out = jnp.full_like(columns[0], -jnp.inf)
    for j, column in enumerate(columns):
        out = jnp.where(index == j, column, out)
    return out


def _total(terms: list[Array]) -> Array:
    return functools.reduce(jnp.add, terms)


def _materialised(tree: T, needed: Array) -> T:
    """``tree``, computed once into memory, or zeros where nothing is ``needed``.

    Without this boundary XLA's CPU fusion copies the whole element-wise graph over the columns
    into every consumer (measured: 10x slower at 4096 rows; ``optimization_barrier`` is removed
    before fusion there). A conditional's results are always materialised. On accelerators it
    is the identity: a conditional there costs a host synchronisation.
    """

    def on_cpu(tree: T, needed: Array) -> T:
        zeros = jax.tree.map(jnp.zeros_like, tree)
        return jax.lax.cond(jnp.any(needed), lambda: tree, lambda: zeros)

    return jax.lax.platform_dependent(tree, needed, cpu=on_cpu, default=lambda tree, _: tree)


def _sum_above(d: Columns, used: Array, beta: Array, eps: Array, r: float) -> Array:
    """``S(beta)`` over the first ``used`` columns: ``sum_{j < used} g((d_j - beta) / eps)``.

    Only compared with k (never part of an output), so it multiplies by ``1/eps``: XLA's CPU
    fusion treats a division as expensive and then materialises every term in its own kernel.
    """
    inverse = 1 / eps
    terms = []
    for j, dj in enumerate(d):
        u = jnp.clip((dj - beta) * inverse, 0, 1)  # NaN for -inf - -inf, never selected
        terms.append(jnp.where((j < used) & (dj > beta), power(u, r), 0))
    return _total(terms)


class _Chain(NamedTuple):
    columns: Columns  # shifted by c_k once it is read (d = c - c_k), raw before
    last: Array  # the last value read (raw)
    shift: Array  # c_k once read
    read: Array  # how many values were read
    done: Array


def _chain(
    x: Array, valid: Array, k: Array, eps: Array, r: float, active: Array
) -> tuple[Columns, Array, Array, Array]:
    """The largest distinct values of each row by masked maxima, read until they settle ``tau``.

    Round ``j`` reads ``c_j = max{x_i : x_i < c_(j-1)}``. Once past ``c_k`` a row stops when
    ``S_(j-1)(c_j) >= k`` (the sum over the values above): then ``c_j <= tau_(j-1)``, so no later
    entry reaches the output and the support is ``c_1..c_(j-1)``. The few rows that need many
    values finish on a compacted batch (:func:`core._lockstep.iterate_rows`).

    Returns the columns shifted by ``c_k`` (``-inf`` where not read), the shift, how many values
    were read, and which rows settled.
    """
    width = CANDIDATES + 1
    kf = k.astype(x.dtype)

    def unfinished(s: _Chain) -> Array:
        return ~s.done & (s.read < width)

    def step(s: _Chain, rows: tuple[Array, ...]) -> _Chain:
        x, valid, k, kf, eps = rows
        go = unfinished(s)
        value = jnp.max(jnp.where(valid & (x < s.last[:, None]), x, -jnp.inf), axis=-1)
        now = s.read + 1
        at_k = go & (now == k)
        shift = jnp.where(at_k, value, s.shift)
        # Columns are stored shifted by c_k: the earlier ones are shifted when c_k arrives.
        columns = tuple(jnp.where(at_k, cj - value, cj) for cj in s.columns)
        d = value - shift
        settled = (now > k) & (_sum_above(columns, s.read, d, eps, r) >= kf)
        return _Chain(
            columns=tuple(
                jnp.where(go & (s.read == j), jnp.where(now >= k, d, value), cj)
                for j, cj in enumerate(columns)
            ),
            last=jnp.where(go, value, s.last),
            shift=shift,
            read=jnp.where(go, now, s.read),
            done=s.done | (go & (settled | (value == -jnp.inf))),
        )

    rows = x.shape[0]
    init = _Chain(
        columns=tuple(jnp.full((rows,), -jnp.inf, x.dtype) for _ in range(width)),
        last=jnp.full((rows,), jnp.inf, x.dtype),
        shift=jnp.zeros((rows,), x.dtype),
        read=jnp.zeros((rows,), jnp.int32),
        done=~active,
    )
    final = iterate_rows(step, init, (x, valid, k, kf, eps), unfinished=unfinished)
    # A row that ran out of entries settled if the values above carry k (else it has fewer than
    # k distinct values: repeats, for the fallback).
    return final.columns, final.shift, final.read, final.done & (final.read > k)


def _top_values(
    x: Array, valid: Array, k: Array, eps: Array, r: float
) -> tuple[Columns, Array, Array, Array]:
    """The ``K + 1`` largest values of each row (with repeats) by one ``lax.top_k``.

    Same outputs as :func:`_chain`: the support is the first ``j >= k`` with ``S_j(c_(j+1)) >= k``
    (all ``j`` tested at once, no loop); ``count`` is one more than it.
    """
    width = CANDIDATES + 1
    masked = jnp.where(valid, x, -jnp.inf)
    if x.shape[-1] < width:  # short rows: pad with -inf (nothing more to read)
        pad = jnp.full((x.shape[0], width - x.shape[-1]), -jnp.inf, x.dtype)
        masked = jnp.concatenate([masked, pad], axis=-1)
    values, _ = jax.lax.top_k(masked, width)
    shift = jnp.take_along_axis(values, jnp.maximum(k - 1, 0)[:, None], axis=-1)[:, 0]
    shift = jnp.where(jnp.isfinite(shift), shift, 0)
    d = values - shift[:, None]
    # S_j(c_(j+1)) for every j at once: terms[row, j, i] = g((d_i - d_j) / eps) for i < j.
    gap = (d[:, None, :] - d[:, :, None]) * (1 / eps)[:, None, None]
    above = (jnp.arange(width)[None, :] < jnp.arange(width)[:, None]) & (gap > 0)
    terms = jnp.where(above, power(jnp.clip(gap, 0, 1), r), 0)  # NaN where -inf - -inf: masked
    settled = (jnp.arange(width) >= k[:, None]) & (jnp.sum(terms, axis=-1) >= k[:, None])
    support = jnp.where(jnp.any(settled, axis=-1), jnp.argmax(settled, axis=-1), width)
    columns = tuple(d[:, j] for j in range(width))
    return columns, shift, support.astype(jnp.int32) + 1, support < width


# ------------------------------------------------------------------------------- the exact root


def _block_root(stats: tuple[Array, ...], weight: Array, eps: Array, r: float) -> Array:
    """Largest root of ``sum_B ((d_i - tau)/eps)^r = W`` from the block's power sums (shifted)."""
    m, s1, s2, s3 = stats
    if r == 1.0:
        root = safe_divide(s1 - eps * weight, m)
    else:  # r == 3: centred moments from the power sums (|d| < eps: no cancellation to fear)
        mu = safe_divide(s1, m)
        m2 = jnp.maximum(s2 - mu * s1, 0)
        m3 = s3 - 3 * mu * s2 + 2 * mu * mu * s1
        root = cubic_block_root(m, mu, m2, m3, weight, eps, magnitude=False)
    return jnp.where(m > 0, root, -jnp.inf)


def _block_sums(d: Columns, tops: Array, end: Array) -> tuple[Array, ...]:
    """Count and power sums of ``d`` over the columns ``tops <= j < end``."""
    inside = [(tops <= j) & (j < end) for j in range(len(d))]
    db = [jnp.where(b, dj, 0) for b, dj in zip(inside, d, strict=True)]
    return (
        _total([b.astype(d[0].dtype) for b in inside]),
        _total(db),
        _total([v * v for v in db]),
        _total([v * v * v for v in db]),
    )


def _candidate_threshold(
    d: Columns, count: Array, settled: Array, k: Array, eps: Array, r: float
) -> tuple[Array, Array]:
    """Threshold (shifted by ``c_k``) of every settled row from its support ``c_1..c_s``.

    ``s = count - 1``. The root lies in ``[c_(s+1), c_s)``, where no entry joins or leaves the
    support; only the saturated prefix is unknown. Entry ``i`` is saturated iff
    ``S_s(c_i - eps) <= k`` (a prefix of ``i < k``: the k-th can always be taken as pooled), found
    by bisection; the pooled block is then ``c_(t+1)..c_s`` and its root is closed form. Returns the
    shifted threshold (0 where not settled) and the number of candidates above it (the support,
    for the chain's count check).
    """
    support = count - 1
    kf = k.astype(eps.dtype)

    # t = #{i < k - 1 : S_s(d_i - eps) <= k}. As max(-eps, d_s) <= tau < 0 (shifted),
    # entries with d >= eps are saturated and those below `unsaturated` are not: bisection runs
    # only over the entries in between, usually none; a support of k is the hard case.
    def halve(bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        searching = lo < hi
        mid = (lo + hi + 1) // 2  # is entry mid - 1 (0-based) saturated?
        saturated = _sum_above(d, support, _pick(d, mid - 1) - eps, eps, r) <= kf
        return jnp.where(searching & saturated, mid, lo), jnp.where(
            searching & ~saturated, mid - 1, hi
        )

    above_top = [(j < k - 1).astype(jnp.int32) for j in range(len(d))]
    unsaturated = eps + jnp.maximum(-eps, _pick(d, support))  # d below it: z < 1
    hard = support == k
    lo = jnp.where(
        hard, k - 1, _total([a * (dj >= eps) for a, dj in zip(above_top, d, strict=True)])
    )
    hi = jnp.where(
        hard, k - 1, _total([a * (dj >= unsaturated) for a, dj in zip(above_top, d, strict=True)])
    )
    levels = max(CANDIDATES - 1, 1).bit_length()

    def on_cpu(bounds: tuple[Array, Array]) -> tuple[Array, Array]:  # as many steps as needed
        return jax.lax.while_loop(lambda b: jnp.any(b[0] < b[1]), halve, bounds)

    def elsewhere(bounds: tuple[Array, Array]) -> tuple[Array, Array]:  # no host synchronisation
        return jax.lax.fori_loop(0, levels, lambda _, b: halve(b), bounds)

    tops, _ = jax.lax.platform_dependent((lo, hi), cpu=on_cpu, default=elsewhere)
    root = _block_root(_block_sums(d, tops, support), kf - tops.astype(eps.dtype), eps, r)
    # Kept inside the interval that holds it (rounding): between the next zero and the last
    # pooled entry, and between the next saturation and the last top's.
    last_top = jnp.where(tops >= 1, _pick(d, tops - 1) - eps, jnp.inf)
    floor = jnp.maximum(_pick(d, support), _pick(d, tops) - eps)
    tau = jnp.clip(root, floor, jnp.minimum(_pick(d, support - 1), last_top))
    # The hard case: the middle of the flat piece [max(c_(k+1), c_k - 2 eps), c_k - eps].
    flat = 0.5 * (jnp.maximum(_pick(d, support), -2 * eps) - eps)
    tau = _materialised(jnp.where(hard, flat, tau), settled)
    above = _total([((j < count) & (dj > tau)).astype(jnp.int32) for j, dj in enumerate(d)])
    return jnp.where(settled, tau, 0), above


# ----------------------------------------------------------------------------- the whole solver


def _fallback(
    failed: Array,
    shifted: tuple[Array, Array],
    x: Array,
    valid: Array,
    k: Array,
    eps: Array,
    solve: Solve,
) -> tuple[Array, Array]:
    """The failed rows' threshold (shift 0) from the general solver, run on the whole batch only
    when a row failed: one compiled copy of the solver (each more copy, such as a compacted batch
    of the failed rows, costs ~1.5 s of XLA compilation per shape; the solver's own compaction
    already finishes few stragglers cheaply)."""

    def general(shifted: tuple[Array, Array]) -> tuple[Array, Array]:
        shift, tau = shifted
        return jnp.where(failed, 0, shift), jnp.where(failed, solve(x, valid, k, eps), tau)

    return jax.lax.cond(jnp.any(failed), general, lambda shifted: shifted, shifted)


def mask_threshold(
    x: Array,
    valid: Array,
    k: Array,
    eps: Array,
    r: float,
    solve: Solve,
    source: Source = "platform",
) -> tuple[Array, Array]:
    """The exact threshold of every row of the sparse mask (rows on axis 0, entries on axis 1), as
    ``(shift, tau)``: ``z_i = ((x_i - shift) - tau) / eps``.

    ``shift`` is ``c_k`` for the rows solved here (``tau`` in ``[-eps, 0)`` then keeps the digits
    that ``c_k + tau`` would round away when ``|x| >> eps``) and 0 for the others. ``k`` is already
    clipped to ``[0, length]``; ``solve(x, valid, k, eps) -> tau`` is the general solver for the
    rows the candidates do not settle. Only ``r = 1`` and ``r = 3`` (p = 2, 4/3) have the
    closed-form root; other ``r`` go to ``solve`` directly. ``source`` (static): where the
    candidates come from, ``"platform"`` (the chain on CPU, ``top_k`` elsewhere) or either one
    forced (tests run the accelerator path on the CPU this way).
    """
    if r not in (1.0, 3.0):
        tau = solve(x, valid, k, eps)
        return jnp.zeros_like(tau), tau
    length = jnp.sum(valid, axis=-1)
    lower = (k == 0) | (k >= length)  # trivial rows: all zeros or all ones
    small = ~lower & (k <= CANDIDATES)

    def by_chain(x: Array, valid: Array) -> tuple[Array, Array, Array]:
        d, shift, count, settled = _chain(x, valid, k, eps, r, small)
        tau, above = _candidate_threshold(d, count, settled, k, eps, r)
        # The chain lists distinct values: a repeated value above tau would be missing.
        z = ((x - shift[:, None]) - tau[:, None]) / eps[:, None]
        repeats = jnp.sum(valid & (z > 0), axis=-1) != above
        return shift, tau, ~settled | repeats

    def by_top_k(x: Array, valid: Array) -> tuple[Array, Array, Array]:
        d, shift, count, settled = _top_values(x, valid, k, eps, r)
        tau, _ = _candidate_threshold(d, count, settled, k, eps, r)
        return shift, tau, ~settled

    def candidates(x: Array, valid: Array) -> tuple[Array, Array, Array]:
        if source == "chain":
            shift, tau, failed = by_chain(x, valid)
        elif source == "top_k":
            shift, tau, failed = by_top_k(x, valid)
        else:
            shift, tau, failed = jax.lax.platform_dependent(
                x, valid, cpu=by_chain, default=by_top_k
            )
        shift = jnp.where(small, shift, 0)
        tau = jnp.where(small, tau, trivial_mask_threshold(x, valid, k, eps))
        return shift, tau, (small & failed) | (~small & ~lower)

    def none(_x: Array, _valid: Array) -> tuple[Array, Array, Array]:
        # No small k: every row to the general solver (it sets the trivial rows itself), and no
        # pass over the rows here.
        return jnp.zeros_like(eps), jnp.zeros_like(eps), jnp.ones_like(small)

    shift, tau, failed = jax.lax.cond(jnp.any(small), candidates, none, x, valid)
    return _fallback(failed, (shift, tau), x, valid, k, eps, solve)
