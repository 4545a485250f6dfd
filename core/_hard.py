"""Hard top-k operators with ``k`` as data, by exact selection on the bit patterns of the scores.

``jax.lax.top_k`` needs a static ``k`` and a full sort would cost ``O(n log n)`` in XLA's slow CPU
sort; instead the k-th largest value of every row is found by bisection on the order-preserving
integer image of the floats (at most 32 or 64 passes, usually ``log2 n`` with snapping), then ties
at the threshold are broken by position (the lower index wins).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from core._rows import as_float_array, row_k, row_lengths, valid_entries


def _ordered_keys(x: Array) -> Array:
    """Unsigned integers whose order is the order of the floats ``x`` (with -0 == +0)."""
    bits = 32 if x.dtype.itemsize <= 4 else 64
    signed, unsigned = (jnp.int32, jnp.uint32) if bits == 32 else (jnp.int64, jnp.uint64)
    x = x.astype(jnp.float32 if bits == 32 else jnp.float64)
    x = jnp.where(x == 0, jnp.zeros_like(x), x)  # -0 becomes +0 (XLA folds away `x + 0.0`)
    raw = jax.lax.bitcast_convert_type(x, signed)
    flipped = jnp.where(raw < 0, raw ^ jnp.array(jnp.iinfo(signed).max, signed), raw)
    sign_bit = jnp.array(1, unsigned) << (bits - 1)
    return jax.lax.bitcast_convert_type(flipped, unsigned) ^ sign_bit


def _kth_largest_key(keys: Array, valid: Array, k: Array) -> Array:
    """The k-th largest key among the valid entries of each row (k >= 1), by snapped bisection.

    Invariant: at least ``k`` valid keys are ``>= lo`` and fewer than ``k`` are ``>= hi``; ``lo`` and
    ``hi - 1`` are always actual keys, so the loop ends as soon as no key lies strictly between.
    """
    zero = jnp.zeros((), keys.dtype)
    top = jnp.array(jnp.iinfo(keys.dtype).max, keys.dtype)
    lo = jnp.min(jnp.where(valid, keys, top), axis=-1)
    hi = jnp.max(jnp.where(valid, keys, zero), axis=-1) + 1

    def unfinished(state: tuple[Array, Array]) -> Array:
        lo, hi = state
        return jnp.any(hi - lo > 1)

    def step(state: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = state
        mid = lo + (hi - lo) // 2
        above = valid & (keys >= mid[..., None])
        enough = jnp.sum(above, axis=-1) >= k
        smallest_above = jnp.min(jnp.where(above, keys, top), axis=-1)
        largest_below = jnp.max(jnp.where(valid & ~above, keys, zero), axis=-1)
        active = hi - lo > 1
        lo = jnp.where(active & enough, smallest_above, lo)
        hi = jnp.where(active & ~enough, largest_below + 1, hi)
        return lo, hi

    lo, _ = jax.lax.while_loop(unfinished, step, (lo, hi))
    return lo


def _topk_mask(scores: ArrayLike, k: ArrayLike, lengths: ArrayLike | None) -> Array:
    scores = jax.lax.stop_gradient(as_float_array(scores))
    lengths_ = row_lengths(scores, lengths)
    valid = valid_entries(scores, lengths_)
    k_ = row_k(scores, k, lengths_)
    keys = _ordered_keys(scores)
    kth = _kth_largest_key(keys, valid, jnp.maximum(k_, 1))[..., None]
    above = valid & (keys > kth)
    at = valid & (keys == kth)
    still_needed = (k_ - jnp.sum(above, axis=-1))[..., None]
    chosen_ties = at & (jnp.cumsum(at, axis=-1) <= still_needed)
    selected = (above | chosen_ties) & (k_[..., None] > 0)
    return selected.astype(scores.dtype)


def hard_topk_mask(x: ArrayLike, k: ArrayLike, *, lengths: ArrayLike | None = None) -> Array:
    r"""Indicator of the ``k`` largest entries of each row: ``argmax_{y in P(1_k)} <y, x>``.

    Ties at the k-th value go to the lower index. The derivative is zero almost everywhere.

    Args:
        x: scores, shape ``(..., n)``.
        k: number of entries to keep, an int or an int array of shape ``(...)`` (data, not static).
        lengths: optional ``(...)`` number of real entries per row; the tail is ignored and gets 0.

    Returns:
        A ``(..., n)`` array of zeros and ones in ``x``'s float dtype.

    Example:
        >>> hard_topk_mask(jnp.array([3.0, 1.0, 2.0]), 2)
        Array([1., 0., 1.], dtype=float32)
    """
    return _topk_mask(x, k, lengths)


def hard_topk_values(x: ArrayLike, k: ArrayLike, *, lengths: ArrayLike | None = None) -> Array:
    """``x * hard_topk_mask(x, k)``: the k largest values in place, zeros elsewhere."""
    x = as_float_array(x)
    return x * _topk_mask(x, k, lengths)


def hard_topk_magnitude(x: ArrayLike, k: ArrayLike, *, lengths: ArrayLike | None = None) -> Array:
    """``x * hard_topk_mask(|x|, k)``: the k entries largest in magnitude, signs kept (pruning)."""
    x = as_float_array(x)
    return x * _topk_mask(jnp.abs(x), k, lengths)
