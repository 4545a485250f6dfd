r"""Soft sorting and ranking by projection onto the permutahedron (Blondel et al., ICML 2020).

The permutahedron of ``w`` is ``P(w) = conv{w_pi : pi a permutation}``. With ``rho = (n, n-1, ..., 1)``,
``sort(x) = argmax_{y in P(x)} <y, rho>`` and ``rank(x) = argmax_{y in P(rho)} <y, x>``; the soft
operators add a regulariser ``Q`` (``l2``: ``||y||^2 / 2``; ``kl``: ``<y, log y - 1>``) with strength
``epsilon``:

.. math::

    P_Q(z, w) = \underset{\mu \in P(w)}{\text{argmin}}\ Q(\mu) - \langle \mu, z\rangle,

which reduces to one decreasing isotonic regression of the sorted ``z`` (Blondel et al. 2020,
Prop. 3): with ``s = z`` sorted decreasingly, ``v = argmin_{v dec} R(s - v, w)`` and
``P_Q = s - v`` (unpermuted). On a block ``B`` of the isotonic solution ``v_B = M_B(s) - M_B(w)``
with ``M`` the mean (``l2``) or the log-sum-exp (``kl``), so

.. math::

    P_Q(z, w)_i = (s_i - M_B(s)) + M_B(w), \qquad i \in B .

**Exact at every scale.** The textbook route forms ``s - w`` and later ``s - v``; when one side
dwarfs the other (soft ranks: ``z = x / epsilon`` with ``|x| / epsilon >> n``; soft sort:
``z = rho / epsilon`` against large ``x``) the small side is rounded away and comes back as noise,
and ``x / epsilon`` or ``rho / epsilon`` may not even be representable. Here neither difference is
formed:

* the output is the block formula above: a singleton block returns ``w_i`` exactly, a pooled block
  a shift that is computed from the block's own entries;
* PAV pools adjacent blocks ``A`` (left) and ``B`` while ``v_A <= v_B``, i.e.
  ``M_A(s) - M_B(s) <= M_A(w) - M_B(w)``: each side is the gap of *one* sequence, computed in that
  sequence's frame. The gaps of ``rho`` and ``rho / epsilon`` have closed forms in the block sizes;
* for soft ranks ``x / epsilon`` is never formed. The sorted row splits wherever a gap
  ``(s_i - s_{i+1}) / epsilon`` reaches ``n - 1`` (``l2``) or ``log n`` (``kl``): there every
  ``s_j - w_j`` on the left is at least every one on the right, so the isotonic problem separates
  (the two parts' solutions, concatenated, are feasible and optimal). Inside a part the scores are
  measured from its first entry, ``(s_i - s_first) / epsilon``, a number below ``n`` times the
  part's size;
* soft sorts work in the units of ``x``: ``rho / epsilon`` enters only through the closed-form gaps
  and through ``(mean_B(rho) - rho_i) / epsilon``, which is 0 on singletons and bounded by the
  row's spread on pooled blocks.

Derivatives: the solution is the block formula with the blocks fixed, so its JVP is a (weighted)
block average of the tangent -- O(n), forward and reverse (by transposition), hand-written in the
same frames.

Reference: M. Blondel, O. Teboul, Q. Berthet, J. Djolonga, "Fast Differentiable Sorting and Ranking",
ICML 2020, arXiv:2002.08871 (the ``fast-soft-sort`` conventions are kept: ranks start at 1,
``descending=False`` ranks the smallest entry 1 and sorts ascending).
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from core._isotonic import map_rows, pav_decreasing
from core._rows import (
    as_float_array,
    descending_order,
    finite,
    gap_ratio,
    inverse,
    negate,
    ratio,
    row_lengths,
    row_param,
    valid_entries,
)

__all__ = ["project_permutahedron", "soft_rank", "soft_sort"]

Regularization = Literal["l2", "kl"]
Side = Literal["data", "rho", "rho/eps"]


# ---------------------------------------------------------------------------- block partition


def _log1p(y: Array) -> Array:
    """``log(1 + y)``: XLA's float64 ``log1p`` is off by up to ~120 ulps on [-0.6, -0.3], while
    ``1 + y`` loses nothing that matters once ``|y| >= 1/4``."""
    small = jnp.abs(y) < 0.25
    return jnp.where(small, jnp.log1p(jnp.where(small, y, 0)), jnp.log(1 + y))


def _merge_statistic(regularization: str, a: Array, b: Array, na: Array, nb: Array) -> Array:
    """``M`` of the union of two blocks: the mean (``l2``) or the log-mean-exp (``kl``).

    Both are weighted means (of ``v``, of ``e^v``), computed so that they cannot overflow and, for
    ``kl``, keep a spread far below 1 (``log(mean e^v)`` through ``expm1``/``log1p``).
    """
    total = na + nb
    if regularization == "l2":
        return a * (na / total) + b * (nb / total)
    top = jnp.maximum(a, b)
    return top + _log1p((na / total) * jnp.expm1(a - top) + (nb / total) * jnp.expm1(b - top))


def _log_geometric_mean(m: Array, eps: Array) -> Array:
    """``log mean_{j<m} exp(-j / eps)`` (``m >= 1``; ``-log m`` when ``1 / eps`` overflows)."""
    h = ratio(jnp.ones_like(m), eps)
    t = m * h
    small = t < 1e-2
    series = -(m - 1) * h / 2 + (m * m - 1) * h * h / 24
    closed = (
        jnp.log(-jnp.expm1(-jnp.where(small, 1, t)))
        - jnp.log(-jnp.expm1(-jnp.where(small, 1, h)))
        - jnp.log(m)
    )
    return jnp.where(small, series, closed)


class _Block(NamedTuple):
    """Statistics of one block on the PAV stack."""

    start: Array  # int32: position of its first entry
    size: Array  # float
    chunk: Array  # int32: the separable part it lies in (blocks never pool across parts)
    z: Array  # mean or log-mean-exp of a data side z over the block (else unused)
    w: Array  # the same for a data side w


def _half_gap(
    side: Side,
    regularization: str,
    a: _Block,
    b: _Block,
    stat_a: Array,
    stat_b: Array,
    length: Array,
    eps: Array,
) -> Array:
    """Half the gap ``M_A - M_B`` of one side for adjacent blocks ``A`` (left) and ``B``.

    ``M`` is the mean (``l2``) or the log-sum-exp (``kl``); for ``kl`` both sides drop the common
    ``log |A| - log |B|`` (data sides keep the log-mean-exp), which would otherwise swamp a spread
    far below 1. ``data``: from the blocks' statistics; ``rho``: ``w = rho`` (``l2``) or
    ``log rho`` (``kl``); ``rho/eps``: ``z = rho / eps``. Halved so that the gap of two huge means
    of opposite signs stays finite; ``rho/eps`` gaps may be ``inf`` (nothing pools across them).
    """
    if side == "data":
        return 0.5 * stat_a - 0.5 * stat_b
    if regularization == "l2":
        quarter = (a.size + b.size) / 4
        return ratio(quarter, eps) if side == "rho/eps" else quarter
    if side == "rho/eps":  # LSE_A(rho/eps) - LSE_B(rho/eps) = |A| / eps + F(|A|) - F(|B|)
        return ratio(a.size / 2, eps) + 0.5 * (
            _log_geometric_mean(a.size, eps) - _log_geometric_mean(b.size, eps)
        )
    # log mean_B rho over B = [start, start + size): log(L - start - (size - 1) / 2).
    n = length.astype(a.size.dtype)

    def log_mean_rho(block: _Block) -> Array:
        return jnp.log(n - block.start.astype(n.dtype) - (block.size - 1) / 2)

    return 0.5 * (log_mean_rho(a) - log_mean_rho(b))


def _row_blocks(
    z: Array,
    w: Array,
    chunk: Array,
    length: Array,
    eps: Array,
    *,
    z_side: Side,
    w_side: Side,
    regularization: str,
) -> Array:
    """Block index of every entry of one sorted row (PAV with the two-frame pooling test)."""
    n = z.shape[-1]
    singletons = _Block(jnp.arange(n, dtype=jnp.int32), jnp.ones_like(z), chunk, z, w)

    def merge(a: _Block, b: _Block) -> _Block:
        return _Block(
            a.start,
            a.size + b.size,
            a.chunk,
            _merge_statistic(regularization, a.z, b.z, a.size, b.size),
            _merge_statistic(regularization, a.w, b.w, a.size, b.size),
        )

    def pool(a: _Block, b: _Block) -> Array:
        gap_z = _half_gap(z_side, regularization, a, b, a.z, b.z, length, eps)
        gap_w = _half_gap(w_side, regularization, a, b, a.w, b.w, length, eps)
        return (a.chunk == b.chunk) & (gap_z <= gap_w)

    return pav_decreasing(singletons, merge, lambda block: block.z, length, pool=pool).blocks


class _Layout(NamedTuple):
    """The partition of sorted rows into blocks, per entry."""

    block: Array  # int32 block of each entry (the padding shares one block of its own)
    start: Array  # float position of the entry's block's first entry
    size: Array  # float number of entries of the block


def _block_sum(values: Array, index: Array) -> Array:
    """Per-entry sum of ``values`` over the entry's block, O(n)."""
    n = values.shape[-1]

    def one_row(v: Array, b: Array) -> Array:
        return jax.ops.segment_sum(v, b, num_segments=n)[b]

    return jax.vmap(one_row)(values.reshape(-1, n), index.reshape(-1, n)).reshape(values.shape)


def _block_max(values: Array, index: Array) -> Array:
    n = values.shape[-1]

    def one_row(v: Array, b: Array) -> Array:
        return jax.ops.segment_max(v, b, num_segments=n)[b]

    return jax.vmap(one_row)(values.reshape(-1, n), index.reshape(-1, n)).reshape(values.shape)


def _blocks(
    z: Array,
    w: Array,
    chunk: Array,
    lengths: Array,
    eps: Array,
    valid: Array,
    *,
    z_side: Side,
    w_side: Side,
    regularization: str,
) -> _Layout:
    """PAV on every sorted row (``(..., n)``), then each entry's block, its start and its size."""
    n = z.shape[-1]
    flat = (-1, n)
    dtype = z.dtype
    one_row = functools.partial(
        _row_blocks, z_side=z_side, w_side=w_side, regularization=regularization
    )
    blocks = map_rows(
        one_row,
        jax.lax.stop_gradient(z).reshape(flat),
        jax.lax.stop_gradient(w).reshape(flat),
        chunk.reshape(flat),
        lengths.reshape(-1),
        jax.lax.stop_gradient(eps).reshape(-1),
    ).reshape(z.shape)
    # Real blocks have indices below the length, so n - 1 is free for the padding when there is any.
    index = jnp.where(valid, blocks, n - 1)
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), z.shape)
    first = jnp.concatenate(
        [jnp.ones_like(index[..., :1], bool), index[..., 1:] != index[..., :-1]], axis=-1
    )
    start = jax.lax.cummax(jnp.where(first, positions, 0), axis=z.ndim - 1)
    size = _block_sum(jnp.ones(z.shape, dtype), index)
    return _Layout(index, start.astype(dtype), size)


def _block_mean(values: Array, layout: _Layout) -> Array:
    """Per-entry mean of ``values`` over the entry's block, without overflow of the sum.

    Rows holding values above 1 are summed at an exact power-of-two scale that keeps ``n`` of
    them finite; what that scale flushes to zero is far below the row's resolution.
    """
    shrink = 2.0 ** -(int(values.shape[-1]).bit_length() + 1)
    big = jnp.max(jnp.abs(values), axis=-1, keepdims=True) > 1
    factor = jnp.where(big, shrink, 1).astype(values.dtype)
    return _block_sum(values * factor, layout.block) / layout.size / factor


def _block_softmax(values: Array, index: Array) -> tuple[Array, Array]:
    """``exp(v_i - LSE_B(v))`` and ``LSE_B(v)`` per entry (stable: shifted by the block's max)."""
    top = _block_max(values, index)
    e = jnp.exp(values - top)
    total = _block_sum(e, index)
    return e / total, top + jnp.log(total)


def _weighted_block_sum(weights: Array, values: Array, index: Array) -> Array:
    """``sum_B weights * values`` per entry, 0 * inf read as 0 (weights that underflowed)."""
    return _block_sum(jnp.where(weights > 0, weights * values, 0), index)


def _unpermute(sorted_values: Array, order: Array) -> Array:
    """``out[..., order[j]] = sorted_values[..., j]`` as a gather (cheap to differentiate)."""
    positions = jnp.broadcast_to(jnp.arange(order.shape[-1], dtype=order.dtype), order.shape)
    inverse = jnp.put_along_axis(jnp.zeros_like(order), order, positions, axis=-1, inplace=False)
    return jnp.take_along_axis(sorted_values, inverse, axis=-1)


def _sorted_row(x: Array, valid: Array, negated: bool) -> tuple[Array, Array, Array]:
    """``±x``'s real entries sorted decreasingly (padding last, as 0), the sorting permutation
    and the real entries in sorted order. Negation flips the sign bit (exact for subnormals)."""
    order = descending_order(x, valid, negated=negated)
    s = jnp.take_along_axis(x, order, axis=-1)
    sorted_valid = jnp.take_along_axis(valid, order, axis=-1)
    return jnp.where(sorted_valid, negate(s) if negated else s, 0), order, sorted_valid


def _monotone(sorted_values: Array) -> Array:
    """Non-increasing along the last axis: a running minimum, which moves only values that
    rounding left out of order (a rounded tie pools two blocks; ``1 - 1e-20`` is ``1``)."""
    return jax.lax.cummin(sorted_values, axis=sorted_values.ndim - 1)


def _row_range(s: Array, valid: Array) -> tuple[Array, Array]:
    big = jnp.finfo(s.dtype).max
    high = jnp.max(jnp.where(valid, s, -big), axis=-1, keepdims=True)
    low = jnp.min(jnp.where(valid, s, big), axis=-1, keepdims=True)
    return low, high


# ------------------------------------------------------------------------------------- ranks


class _RankParts(NamedTuple):
    order: Array  # the sorting permutation of each row
    valid: Array  # real entries, in sorted order
    layout: _Layout
    centred: Array  # l2: d_i - mean_B(d); kl: d_i - sum_B p d, with p = softmax_B(d)
    weights: Array  # kl: softmax_B(d) (l2: unused)
    ranks: Array  # ranks in sorted order (0 on the padding)


def _rank_parts(
    x: Array, eps: Array, lengths: Array, descending: bool, regularization: str
) -> _RankParts:
    sx = jax.lax.stop_gradient(x)
    seps = jax.lax.stop_gradient(eps)
    n = x.shape[-1]
    s, order, valid = _sorted_row(sx, valid_entries(x, lengths), descending)
    e = seps[..., None]
    size = lengths.astype(x.dtype)[..., None]
    # The separable parts: a gap (s_i - s_{i+1}) / eps at least the spread of w - rho or log rho.
    threshold = size - 1 if regularization == "l2" else jnp.log(jnp.maximum(size, 1))
    following = jnp.concatenate([s[..., 1:], s[..., -1:]], axis=-1)
    last = jnp.arange(n) >= lengths[..., None] - 1
    split = last | (gap_ratio(s, following, e) >= threshold)
    split_before = jnp.concatenate([jnp.zeros_like(split[..., :1]), split[..., :-1]], axis=-1)
    chunk = jnp.cumsum(split_before, axis=-1, dtype=jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), s.shape)
    first = jax.lax.cummax(jnp.where(split_before, positions, 0), axis=x.ndim - 1)
    # z measured from its part's first entry: in [-(n - 1) * part size, 0].
    origin = jnp.take_along_axis(s, first, axis=-1)
    d = jnp.where(valid, -gap_ratio(origin, s, e), 0)
    layout = _blocks(
        d,
        jnp.zeros_like(d),
        chunk,
        lengths,
        seps,
        valid,
        z_side="data",
        w_side="rho",
        regularization=regularization,
    )
    mean_rho = size - layout.start - (layout.size - 1) / 2
    if regularization == "l2":
        weights = jnp.zeros_like(d)
        centred = jnp.where(valid, d - _block_sum(d, layout.block) / layout.size, 0)
        ranks = centred + mean_rho
    else:
        weights, _ = _block_softmax(jnp.where(valid, d, 0), layout.block)
        centred = jnp.where(valid, d - _weighted_block_sum(weights, d, layout.block), 0)
        ranks = weights * layout.size * mean_rho  # softmax_B(z) * sum_B rho
    ranks = jnp.where(valid, _monotone(jnp.clip(ranks, 1, size)), 0)  # P(rho) in [1, L]^L
    return _RankParts(order, valid, layout, centred, weights, ranks)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _soft_rank(
    x: Array, eps: Array, lengths: Array, descending: bool, regularization: str
) -> Array:
    parts = _rank_parts(x, eps, lengths, descending, regularization)
    return _unpermute(parts.ranks, parts.order)


@_soft_rank.defjvp
def _soft_rank_jvp(
    descending: bool, regularization: str, primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    # On a block: l2  r_i = (z_i - mean_B z) + mean_B rho,  kl  r_i = softmax_B(z)_i sum_B rho,
    # z = s / eps, so dz_i - avg_B dz = (ds_i - avg_B ds) / eps - (z_i - avg_B z) deps / eps.
    x, eps, lengths = primals
    dx, deps = tangents[0], tangents[1]
    parts = _rank_parts(x, eps, lengths, descending, regularization)
    index = parts.layout.block
    ds = jnp.take_along_axis(-dx if descending else dx, parts.order, axis=-1)
    ds = jnp.where(parts.valid, ds, 0)
    if regularization == "l2":
        spread = ds - _block_sum(ds, index) / parts.layout.size
    else:
        spread = ds - _block_sum(parts.weights * ds, index)
    # 0 on singletons, as a select rather than as ds - ds: reverse mode transposes this map after
    # scaling the cotangent by ranks / eps, where XLA may contract one of the two equal terms
    # into an FMA; their difference was then the rounding of a product of size |c| n / eps (~100
    # for float32 rows of 1024 entries with eps = 1e-6, against an exact 0).
    spread = jnp.where(parts.layout.size > 1, spread, 0)
    e = eps[..., None]
    dz = spread * inverse(e) - finite(ratio(parts.centred, e)) * deps[..., None]
    dr = dz if regularization == "l2" else parts.ranks * dz
    dr = jnp.where(parts.valid, dr, 0)
    return _unpermute(parts.ranks, parts.order), _unpermute(dr, parts.order)


# ------------------------------------------------------------------------------------- sorts


class _SortParts(NamedTuple):
    order: Array
    valid: Array
    layout: _Layout
    offset: Array  # l2: (mean_B rho - rho_i) / eps; kl: c_i = (rho_i - rho_first) / eps
    weights_s: Array  # kl: softmax_B(s)
    weights_c: Array  # kl: softmax_B(c)
    values: Array  # the soft sort of sign * x (decreasing), 0 on the padding


def _sort_parts(x: Array, eps: Array, lengths: Array, sign: int, regularization: str) -> _SortParts:
    sx = jax.lax.stop_gradient(x)
    seps = jax.lax.stop_gradient(eps)
    s, order, valid = _sorted_row(sx, valid_entries(x, lengths), sign < 0)
    layout = _blocks(
        jnp.zeros_like(s),
        s,
        jnp.zeros(s.shape, jnp.int32),
        lengths,
        seps,
        valid,
        z_side="rho/eps",
        w_side="data",
        regularization=regularization,
    )
    positions = jnp.arange(x.shape[-1], dtype=x.dtype)
    e = seps[..., None]
    # 0 on singletons; on a pooled block at most the row's spread (mathematically).
    if regularization == "l2":
        offset = ratio(layout.start + (layout.size - 1) / 2 - positions, e)
        zeros = jnp.zeros_like(s)
        values = _block_mean(s, layout) + offset
        weights_s = weights_c = zeros
    else:
        offset = -ratio(positions - layout.start, e)  # c_i <= 0, 0 at the block's first entry
        weights_s, _ = _block_softmax(s, layout.block)
        weights_c, _ = _block_softmax(offset, layout.block)
        # LSE_B(s) - LSE_B(c) = max_B s + log1p(sum_B (e^(s - max) - e^c) / sum_B e^c): the two
        # log-sums nearly cancel when the block's spread is small against 1 (huge eps, tiny x).
        top = _block_max(s, layout.block)
        excess = _block_sum(jnp.expm1(s - top) - jnp.expm1(offset), layout.block)
        values = top + offset + _log1p(excess / _block_sum(jnp.exp(offset), layout.block))
    low, high = _row_range(s, valid)
    # exp(P) lies in P(exp s) (kl), P in P(s) (l2): within the row's range, and sorted.
    values = jnp.where(valid, _monotone(jnp.clip(values, low, high)), 0)
    return _SortParts(order, valid, layout, offset, weights_s, weights_c, values)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _soft_sort(x: Array, eps: Array, lengths: Array, sign: int, regularization: str) -> Array:
    return sign * _sort_parts(x, eps, lengths, sign, regularization).values


@_soft_sort.defjvp
def _soft_sort_jvp(
    sign: int, regularization: str, primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    # l2: out_i = mean_B s + (mean_B rho - rho_i) / eps;  kl: out_i = LSE_B s + c_i - LSE_B c with
    # c_i = (rho_i - rho_first) / eps. The sorting permutation is locally constant.
    x, eps, lengths = primals
    dx, deps = tangents[0], tangents[1]
    parts = _sort_parts(x, eps, lengths, sign, regularization)
    ds = jnp.where(parts.valid, jnp.take_along_axis(sign * dx, parts.order, axis=-1), 0)
    index = parts.layout.block
    e = eps[..., None]
    if regularization == "l2":
        dout = (
            _block_sum(ds, index) / parts.layout.size
            - finite(ratio(parts.offset, e)) * deps[..., None]
        )
    else:
        centred_c = _weighted_block_sum(parts.weights_c, parts.offset, index) - parts.offset
        dout = (
            _block_sum(parts.weights_s * ds, index) + finite(ratio(centred_c, e)) * deps[..., None]
        )
    dout = jnp.where(parts.valid, dout, 0)
    return sign * parts.values, sign * dout


# ------------------------------------------------------------------------------ projection


class _ProjectionParts(NamedTuple):
    order: Array
    valid: Array
    layout: _Layout
    weights_s: Array
    weights_w: Array
    values: Array  # in sorted order


def _projection_parts(z: Array, w: Array, lengths: Array, regularization: str) -> _ProjectionParts:
    sz = jax.lax.stop_gradient(z)
    s, order, valid = _sorted_row(sz, valid_entries(z, lengths), False)
    sw = jnp.where(valid, jax.lax.stop_gradient(w), 0)
    layout = _blocks(
        s,
        sw,
        jnp.zeros(s.shape, jnp.int32),
        lengths,
        jnp.ones(s.shape[:-1], s.dtype),
        valid,
        z_side="data",
        w_side="data",
        regularization=regularization,
    )
    if regularization == "l2":
        weights_s = weights_w = jnp.zeros_like(s)
        values = (s - _block_mean(s, layout)) + _block_mean(sw, layout)
    else:
        weights_s, lse_s = _block_softmax(s, layout.block)
        weights_w, lse_w = _block_softmax(sw, layout.block)
        values = (s - lse_s) + lse_w
    return _ProjectionParts(order, valid, layout, weights_s, weights_w, jnp.where(valid, values, 0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _project(z: Array, w: Array, lengths: Array, regularization: str) -> Array:
    parts = _projection_parts(z, w, lengths, regularization)
    return _unpermute(parts.values, parts.order)


@_project.defjvp
def _project_jvp(
    regularization: str, primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    # l2: P_i = s_i - mean_B s + mean_B w;  kl: P_i = s_i - LSE_B s + LSE_B w.
    z, w, lengths = primals
    dz, dw = tangents[0], tangents[1]
    parts = _projection_parts(z, w, lengths, regularization)
    index = parts.layout.block
    ds = jnp.where(parts.valid, jnp.take_along_axis(dz, parts.order, axis=-1), 0)
    dw = jnp.where(parts.valid, dw, 0)
    if regularization == "l2":
        size = parts.layout.size
        dp = ds - _block_sum(ds, index) / size + _block_sum(dw, index) / size
    else:
        dp = ds - _block_sum(parts.weights_s * ds, index) + _block_sum(parts.weights_w * dw, index)
    dp = jnp.where(parts.valid, dp, 0)
    return _unpermute(parts.values, parts.order), _unpermute(dp, parts.order)


# ---------------------------------------------------------------------------------- public API


def _regularization(regularization: str) -> str:
    if regularization not in ("l2", "kl"):
        raise ValueError(f"regularization must be 'l2' or 'kl', got {regularization!r}")
    return str(regularization)


def project_permutahedron(
    z: ArrayLike,
    w: ArrayLike,
    *,
    regularization: Regularization = "l2",
    lengths: ArrayLike | None = None,
) -> Array:
    r"""Regularised projection onto the permutahedron ``P(w)`` of each row.

    .. math::

        \text{l2: } \underset{\mu \in P(w)}{\text{argmin}} \tfrac12\|\mu - z\|^2, \qquad
        \text{kl: } \underset{\mu \in P(e^{w})}{\text{argmin}}\ \text{KL}(\mu, e^{z})
        \text{ returned in log space (fast-soft-sort's ``Projection``)}.

    Computed as ``(s_i - M_B(s)) + M_B(w)`` on the isotonic blocks (see the module docstring), so
    accurate to the rounding of ``z`` and ``w`` in their own units.

    Args:
        z: ``(..., n)`` points.
        w: ``(..., n)`` (or ``(n,)``) generating vector, **sorted decreasingly** along the last axis
            (on the real entries).
        regularization: static, ``"l2"`` or ``"kl"``.
        lengths: optional ``(...)`` real entries per row; the tail gets 0.

    Returns:
        The projection, shape of ``z``; differentiable in ``z`` and ``w`` (block averages, O(n)).

    Example:
        >>> project_permutahedron(jnp.array([5.0, 1.0, 2.0]), jnp.array([3.0, 2.0, 1.0]))
        Array([3., 1., 2.], dtype=float32)
    """
    z_ = as_float_array(z)
    w_ = jnp.broadcast_to(jnp.asarray(w, z_.dtype), z_.shape)
    lengths_ = row_lengths(z_, lengths)
    w_ = jnp.where(valid_entries(z_, lengths_), w_, 0)
    return _project(z_, w_, lengths_, _regularization(regularization))


def soft_rank(
    x: ArrayLike,
    *,
    epsilon: ArrayLike = 1.0,
    descending: bool = False,
    regularization: Regularization = "l2",
    lengths: ArrayLike | None = None,
) -> Array:
    r"""Soft ranks (1 = smallest, or largest if ``descending``) of each row.

    .. math::

        r_Q(x) = \underset{\mu \in P(\rho)}{\text{argmin}}\ \epsilon\, Q(\mu) - \langle \mu, \pm x\rangle,
        \qquad \rho = (n, n-1, \dots, 1),

    i.e. ``P_Q(±x / epsilon, rho)`` for ``l2`` and ``exp(P_Q(±x / epsilon, log rho))`` for ``kl``.
    The ranks depend on ``x`` only through the ratios ``(x_i - x_j) / epsilon``: they are invariant
    to shifting ``x`` and to scaling ``x`` and ``epsilon`` together. The hard ranks,
    ``argmax_{mu in P(rho)} <mu, ±x>``, are recovered exactly once every gap between distinct
    values exceeds ``(n - 1) epsilon``; large ``epsilon`` pulls every rank towards ``(n+1)/2``.

    Accurate for every finite ``x`` and every ``epsilon > 0`` of the dtype (``x / epsilon`` is never
    formed, see the module docstring): to a few ulps of ``n`` times the size of the pooled groups.
    The derivative is ``(block-centred tangent) / epsilon``; it overflows only where it is not
    representable (ties or near-ties with ``|tangent| / epsilon`` beyond the dtype's range).

    Args:
        x: ``(..., n)`` scores, float32 or float64.
        epsilon: regularisation strength (> 0), a float or an array ``(...)`` (data).
        descending: static; rank the largest entry 1 instead of the smallest.
        regularization: static, ``"l2"`` (piecewise linear) or ``"kl"``.
        lengths: optional ``(...)`` real entries per row; the tail gets 0 and the real entries are
            ranked among themselves.

    Returns:
        ``(..., n)`` soft ranks in ``[1, L]`` (``L`` the row length), summing to ``L (L + 1) / 2``.

    References:
        M. Blondel, O. Teboul, Q. Berthet, J. Djolonga, "Fast Differentiable Sorting and Ranking",
        ICML 2020, arXiv:2002.08871, Prop. 3 (the reduction to isotonic regression).

    Example:
        >>> soft_rank(jnp.array([5.0, 1.0, 2.0]), epsilon=2.0)
        Array([3.  , 1.25, 1.75], dtype=float32)
    """
    x_ = as_float_array(x)
    lengths_ = row_lengths(x_, lengths)
    eps = row_param(x_, epsilon)
    return _soft_rank(x_, eps, lengths_, bool(descending), _regularization(regularization))


def soft_sort(
    x: ArrayLike,
    *,
    epsilon: ArrayLike = 1.0,
    descending: bool = False,
    regularization: Regularization = "l2",
    lengths: ArrayLike | None = None,
) -> Array:
    r"""Soft sort of each row (ascending, or descending if ``descending``).

    .. math::

        s_Q(x) = \underset{\mu \in P(x)}{\text{argmin}}\ \epsilon\, Q(\mu) - \langle \mu, \rho\rangle
        \quad(\text{descending; ascending is } -s_Q(-x)),

    i.e. ``P_Q(rho / epsilon, sort_desc(x))`` (fast-soft-sort's ``SoftSort``). ``epsilon`` is in the
    units of ``1 / x``: ``s(a x, epsilon) = a s(x, a epsilon)`` for ``l2``, so the sort is hard once
    every gap between consecutive sorted values is below ``1 / epsilon`` and pools towards the mean
    once the row's spread is large against ``1 / epsilon`` (``[1e8, -1e8, 1, 0]`` with
    ``epsilon = 1`` is nearly the mean plus ``rho - 2.5``). The ``l2`` sort keeps the sum of ``x``
    and is monotone; both stay within ``[min x, max x]``.

    Accurate for every finite ``x`` and every ``epsilon > 0`` of the dtype: to a few ulps of
    ``max |x|`` (``rho / epsilon`` is never formed, see the module docstring).

    Args:
        x: ``(..., n)`` values, float32 or float64.
        epsilon: regularisation strength (> 0), a float or an array ``(...)`` (data).
        descending: static; sort decreasingly.
        regularization: static, ``"l2"`` or ``"kl"``.
        lengths: optional ``(...)`` real entries per row; the first ``L`` outputs are the soft
            sort of the real entries, the tail gets 0.

    Returns:
        ``(..., n)`` softly sorted values (their sum equals the sum of ``x`` for ``l2``).

    References:
        M. Blondel, O. Teboul, Q. Berthet, J. Djolonga, "Fast Differentiable Sorting and Ranking",
        ICML 2020, arXiv:2002.08871, Prop. 3.

    Example:
        >>> [round(float(v), 4) for v in soft_sort(jnp.array([5.0, 1.0, 2.0]), epsilon=1.0)]
        [1.6667, 2.6667, 3.6667]
    """
    x_ = as_float_array(x)
    lengths_ = row_lengths(x_, lengths)
    eps = row_param(x_, epsilon)
    sign = 1 if descending else -1
    return _soft_sort(x_, eps, lengths_, sign, _regularization(regularization))
