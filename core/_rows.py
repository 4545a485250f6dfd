"""Row conventions shared by every operator family.

Every operator works on the last axis of an ``(..., n)`` array. Per-row parameters (``k``, ``epsilon``,
``lengths``) are *data*: a scalar or an array of the batch shape ``(...)``. Passing them as data keeps
one compiled executable per shape, whatever their values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import ndtri
from jax.typing import ArrayLike


def as_float_array(x: ArrayLike) -> Array:
    """``x`` as a floating array (integers become the default float type)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def row_lengths(x: Array, lengths: ArrayLike | None) -> Array:
    """The number of real entries of each row, broadcast to the batch shape, as int32."""
    n = x.shape[-1]
    if lengths is None:
        return jnp.full(x.shape[:-1], n, dtype=jnp.int32)
    lengths = jnp.asarray(lengths)
    return jnp.clip(jnp.broadcast_to(lengths, x.shape[:-1]), 0, n).astype(jnp.int32)


def valid_entries(x: Array, lengths: Array) -> Array:
    """Boolean ``(..., n)`` mask of the real (unpadded) entries."""
    positions = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return positions < lengths[..., None]


def row_k(x: Array, k: ArrayLike, lengths: Array) -> Array:
    """``k`` broadcast to the batch shape and clipped to ``[0, length]`` of its row, as int32."""
    k = jnp.broadcast_to(jnp.asarray(k), x.shape[:-1])
    return jnp.clip(k, 0, lengths).astype(jnp.int32)


def row_param(x: Array, value: ArrayLike) -> Array:
    """A real per-row parameter (``epsilon``) broadcast to the batch shape in ``x``'s dtype."""
    return jnp.broadcast_to(jnp.asarray(value, dtype=x.dtype), x.shape[:-1])


def safe_divide(numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator``, and 0 where the denominator is 0 (double-``where`` guard)."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), 0)


def normal_upper_quantile(x: Array, valid: Array, rank: Array) -> Array:
    """Where the ``rank``-th largest real entry of each row would be if the row were normal.

    The ``1 - rank/n`` quantile of a normal fit (mean and variance over the real entries): a cheap
    first guess for the selection-type solvers, which stay exact for any data.
    """
    count = jnp.maximum(jnp.sum(valid, axis=-1), 1).astype(x.dtype)
    mean = jnp.sum(jnp.where(valid, x, 0), axis=-1) / count
    var = jnp.sum(jnp.where(valid, (x - mean[..., None]) ** 2, 0), axis=-1) / count
    tail = jnp.clip(rank.astype(x.dtype) / count, 1e-7, 1 - 1e-7)
    return mean + jnp.sqrt(var) * ndtri(1 - tail)


def descending_order(x: Array, valid: Array) -> Array:
    """Stable descending argsort of the real entries of each row, the padding last."""
    key = jnp.where(valid, -x, jnp.inf)
    return jnp.argsort(jax.lax.stop_gradient(key), axis=-1, stable=True)
