"""Hard top-k operators with ``k`` as data, by exact selection on the bit patterns of the scores.

``jax.lax.top_k`` needs a static ``k`` and a full sort would cost ``O(n log n)`` in XLA's slow CPU
sort; instead the k-th largest value of every row is found by bisection on the order-preserving
integer image of the floats (at most 32 or 64 passes, usually ``log2 n`` with snapping), then ties
at the threshold are broken by position (the lower index wins).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from core._rows import (
    as_float_array,
    normal_upper_quantile,
    ordered_keys,
    row_k,
    row_lengths,
    valid_entries,
)


def _ordered_keys(x: Array) -> Array:
    """Signed integers whose order is the order of the floats ``x`` (with -0 == +0), computed
    from the bits so that subnormal scores keep their order (:func:`core._rows.ordered_keys`)."""
    return ordered_keys(x.astype(jnp.float32 if x.dtype.itemsize <= 4 else jnp.float64))


def _key_to_float(key: Array, dtype: jnp.dtype) -> Array:
    """Inverse of :func:`_ordered_keys`."""
    raw = jnp.where(key < 0, key ^ jnp.array(jnp.iinfo(key.dtype).max, key.dtype), key)
    return jax.lax.bitcast_convert_type(raw, dtype)


def _kth_largest_key(keys: Array, valid: Array, k: Array, first_guess: Array) -> Array:
    """The k-th largest key among the valid entries of each row (k >= 1).

    Invariant: ``c_lo = #{keys >= lo} >= k > #{keys >= hi} = c_hi``; ``lo`` and ``hi - 1`` are always
    actual keys (each trial snaps to the nearest key on its side), so the loop ends as soon as no key
    lies strictly between. Trials alternate between false position on the counts (in value space,
    fast on smooth data; the first trial is ``first_guess``) and bisection of the key range (at most
    32 or 64 halvings whatever the data).
    """
    float_dtype = jnp.float32 if keys.dtype == jnp.int32 else jnp.float64
    bottom = jnp.array(jnp.iinfo(keys.dtype).min, keys.dtype)
    top = jnp.array(jnp.iinfo(keys.dtype).max, keys.dtype)
    lo = jnp.min(jnp.where(valid, keys, top), axis=-1)
    hi = jnp.max(jnp.where(valid, keys, bottom), axis=-1) + 1  # NaN keys are never reached
    c_lo = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    c_hi = jnp.zeros_like(c_lo)
    kf = k.astype(float_dtype)
    guess_key = _ordered_keys(first_guess.astype(float_dtype))

    class State(NamedTuple):
        lo: Array
        hi: Array
        c_lo: Array
        c_hi: Array
        step: Array

    def unfinished(s: State) -> Array:
        return jnp.any(s.lo + 1 < s.hi)

    def step(s: State) -> State:
        lo_value = _key_to_float(s.lo, float_dtype)
        hi_value = _key_to_float(s.hi - 1, float_dtype)
        share = (s.c_lo.astype(float_dtype) - kf + 0.5) / jnp.maximum(s.c_lo - s.c_hi, 1)
        interpolated = _ordered_keys(lo_value + share * (hi_value - lo_value))
        halfway = (s.lo >> 1) + (s.hi >> 1) + (s.lo & s.hi & 1)  # floor((lo+hi)/2), no overflow
        trial = jnp.where(s.step == 0, guess_key, jnp.where(s.step % 2 == 1, interpolated, halfway))
        trial = jnp.clip(trial, s.lo + 1, s.hi - 1)
        above = valid & (keys >= trial[..., None])
        count = jnp.sum(above, axis=-1, dtype=jnp.int32)
        enough = count >= k
        smallest_above = jnp.min(jnp.where(above, keys, top), axis=-1)
        largest_below = jnp.max(jnp.where(valid & ~above, keys, bottom), axis=-1)
        active = s.lo + 1 < s.hi
        raise_lo = active & enough
        lower_hi = active & ~enough
        return State(
            lo=jnp.where(raise_lo, smallest_above, s.lo),
            hi=jnp.where(lower_hi, largest_below + 1, s.hi),
            c_lo=jnp.where(raise_lo, count, s.c_lo),
            c_hi=jnp.where(lower_hi, count, s.c_hi),
            step=s.step + 1,
        )

    final = jax.lax.while_loop(
        unfinished, step, State(lo, hi, c_lo, c_hi, jnp.zeros((), jnp.int32))
    )
    return final.lo


def _topk_mask(scores: ArrayLike, k: ArrayLike, lengths: ArrayLike | None) -> Array:
    scores = jax.lax.stop_gradient(as_float_array(scores))
    lengths_ = row_lengths(scores, lengths)
    valid = valid_entries(scores, lengths_)
    k_ = row_k(scores, k, lengths_)
    keys = _ordered_keys(scores)
    k_at_least_one = jnp.maximum(k_, 1)
    guess = normal_upper_quantile(scores, valid, k_at_least_one - 0.5)
    kth = _kth_largest_key(keys, valid, k_at_least_one, guess)[..., None]
    above = valid & (keys > kth)
    at = valid & (keys == kth)
    still_needed = (k_ - jnp.sum(above, axis=-1))[..., None]
    chosen_ties = at & (jnp.cumsum(at, axis=-1) <= still_needed)
    selected = (above | chosen_ties) & (k_[..., None] > 0)
    return selected.astype(scores.dtype)


@jax.jit
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


@jax.jit
def hard_topk_values(x: ArrayLike, k: ArrayLike, *, lengths: ArrayLike | None = None) -> Array:
    """``x * hard_topk_mask(x, k)``: the k largest values in place, zeros elsewhere."""
    x = as_float_array(x)
    return x * _topk_mask(x, k, lengths)


@jax.jit
def hard_topk_magnitude(x: ArrayLike, k: ArrayLike, *, lengths: ArrayLike | None = None) -> Array:
    """``x * hard_topk_mask(|x|, k)``: the k entries largest in magnitude, signs kept (pruning)."""
    x = as_float_array(x)
    return x * _topk_mask(jnp.abs(x), k, lengths)
