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


def power_of_two(exponent: Array, dtype: jnp.dtype) -> Array:
    """``2**exponent`` (an int array) exactly, built from its bits: 0 below the normal range."""
    finfo = jnp.finfo(dtype)
    int_type = jnp.int32 if finfo.bits == 32 else jnp.int64
    biased = exponent.astype(int_type) + (finfo.maxexp - 1)
    top = 2 * finfo.maxexp - 2
    value = jax.lax.bitcast_convert_type(jnp.clip(biased, 1, top) << finfo.nmant, dtype)
    return jnp.where(biased < 1, 0, jnp.where(biased > top, jnp.inf, value)).astype(dtype)


def ratio(numerator: Array, eps: Array, log2_scale: Array | None = None) -> Array:
    """``numerator * 2**-log2_scale / eps`` for ``eps > 0`` of any magnitude; 0 where the numerator
    is 0 (also when the quotient is infinite).

    Two device behaviours break the plain quotient at the ends of the range. XLA flushes subnormal
    operands to zero (denormals-are-zero on CPU, and in float32 on GPUs and TPUs), so an ``eps``
    below ``finfo.tiny`` would act as 0: its significand ``m`` is read from its bits instead,
    ``1 / eps = 2**(nmant - minexp) / m`` as two factors that stay in range. And XLA turns
    ``x / broadcast(eps)`` into ``x * broadcast(1 / eps)``, whose ``1 / eps`` is a flushed subnormal
    for ``eps > 2**126``: both sides are scaled by ``2**-64`` first (a numerator that this flushes
    gives a quotient far below any resolution). ``log2_scale`` (an int array) undoes an exact
    power-of-two prescaling of the numerator. A subnormal numerator counts as 0 (see
    :func:`gap_ratio` for differences of device values).
    """
    finfo = jnp.finfo(eps.dtype)
    int_type = jnp.int32 if finfo.bits == 32 else jnp.int64
    raw = jax.lax.bitcast_convert_type(eps, int_type)
    subnormal = (raw >> finfo.nmant) == 0
    significand = (raw & ((1 << finfo.nmant) - 1)).astype(eps.dtype)
    head = finfo.maxexp - 28  # 2**head / m stays normal for 1 <= m < 2**nmant
    tail = finfo.nmant - finfo.minexp - head
    scale = jnp.zeros((), jnp.int32) if log2_scale is None else log2_scale
    divisor = jnp.where(subnormal, 1, eps)
    if log2_scale is not None:
        divisor = divisor * power_of_two(scale, eps.dtype)
    shrink = jnp.where(divisor >= 2.0**64, 2.0**-64, 1).astype(eps.dtype)
    # numerator * 2**head / m first: the full reciprocal may overflow where the quotient does not.
    by_subnormal = (numerator * (2.0**head / significand)) * power_of_two(tail - scale, eps.dtype)
    quotient = jnp.where(subnormal, by_subnormal, (numerator * shrink) / (divisor * shrink))
    return jnp.where(numerator == 0, 0, quotient)


@jax.custom_jvp
def inverse(eps: Array) -> Array:
    """``1 / eps`` as a finite factor (:func:`ratio`, capped at ``finfo.max``), for terms that must
    stay linear in a tangent: ``t * inverse(eps)`` is 0 where ``t`` is, for every ``eps > 0``.
    Differentiable (``d(1/eps) = -(1/eps)^2 deps``) although it is computed from bits."""
    return jnp.minimum(ratio(jnp.ones_like(eps), eps), jnp.finfo(eps.dtype).max)


@inverse.defjvp
def _inverse_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    inv = inverse(primals[0])
    return inv, -inv * (inv * tangents[0])


def finite(v: Array) -> Array:
    """``v`` with infinities replaced by ``±finfo.max``: a primal factor of a tangent term, so that
    a zero tangent gives 0 (``inf * 0`` is NaN) while a nonzero one still overflows."""
    big = jnp.finfo(v.dtype).max
    return jnp.clip(v, -big, big)


def scaled_difference(a: Array, b: Array, eps: Array, log2_scale: Array | None = None) -> Array:
    """``(a - b) * 2**-log2_scale / eps`` (see :func:`ratio`) without the spurious overflow of
    ``a - b``.

    Two finite floats of opposite signs near the top of the range have a difference beyond it; their
    halves do not (halving is exact above the subnormals, and a subnormal's lost bit is far below
    the result's resolution then). The quotient is infinite only when it is not representable.
    """
    difference = a - b
    halved = 2 * ratio(0.5 * a - 0.5 * b, eps, log2_scale)
    return jnp.where(jnp.isfinite(difference), ratio(difference, eps, log2_scale), halved)


def magnitude_bits(v: Array) -> Array:
    """The bits of ``|v|`` as a non-negative integer (ordered like ``|v|``, subnormals included)."""
    finfo = jnp.finfo(v.dtype)
    int_type = jnp.int32 if finfo.bits == 32 else jnp.int64
    return jax.lax.bitcast_convert_type(v, int_type) & jnp.iinfo(int_type).max


def is_subnormal(v: Array) -> Array:
    """Whether ``v`` is subnormal, read from its bits (the device's ``v != 0`` reads it as 0)."""
    bits = magnitude_bits(v)
    return (bits != 0) & ((bits >> jnp.finfo(v.dtype).nmant) == 0)


def times_power_of_two(v: Array, exponent: Array) -> Array:
    """``v * 2**exponent`` for ``0 <= exponent <= -minexp``, exactly, subnormal ``v`` included.

    A subnormal ``v`` (flushed to 0 by the device's arithmetic) is rebuilt from its significand,
    for any ``exponent >= 0``; the result is 0 only when it is itself below the normal range. The
    rebuild applies ``2**-nmant`` and ``2**(exponent + minexp)`` as two normal factors: one factor
    ``2**(exponent + minexp - nmant)`` is itself subnormal (so 0) for ``exponent < nmant``, which
    lost every float64 subnormal scaled by less than ``2**52``.
    """
    finfo = jnp.finfo(v.dtype)
    bits = magnitude_bits(v)
    significand = (bits & ((1 << finfo.nmant) - 1)).astype(v.dtype)
    fraction = significand * power_of_two(jnp.asarray(-finfo.nmant), v.dtype)  # exact, normal
    rebuilt = fraction * power_of_two(exponent + finfo.minexp, v.dtype)
    sign = jnp.where(jax.lax.bitcast_convert_type(v, bits.dtype) < 0, -1, 1).astype(v.dtype)
    normal = v * power_of_two(exponent, v.dtype)
    return jnp.where((bits >> finfo.nmant) == 0, sign * rebuilt, normal)


def gap_ratio(a: Array, b: Array, eps: Array) -> Array:
    """``(a - b) / eps`` for any finite ``a``, ``b`` and ``eps > 0``, exact up to two roundings.

    The pair is first scaled by the power of two that brings the larger magnitude near 1, so their
    difference is never a subnormal number (which the device would flush to 0: ``1.3e-38 -
    1.2e-38`` in float32); :func:`ratio` divides the scale out again together with ``eps``.
    """
    finfo = jnp.finfo(a.dtype)
    field = jnp.maximum(magnitude_bits(a), magnitude_bits(b)) >> finfo.nmant
    exponent = jnp.where(field == 0, -finfo.minexp, jnp.clip(finfo.maxexp - 2 - field, 0, None))
    exponent = exponent.astype(jnp.int32)
    return scaled_difference(
        times_power_of_two(a, exponent), times_power_of_two(b, exponent), eps, exponent
    )


def normal_upper_quantile(x: Array, valid: Array, rank: Array) -> Array:
    """Where the ``rank``-th largest real entry of each row would be if the row were normal.

    The ``1 - rank/n`` quantile of a normal fit (mean and variance over the real entries): a cheap
    first guess for the selection-type solvers, which stay exact for any data. The moments are
    taken at an exact power-of-two scale of the row (its squares overflow from ``|x| ~ 1.8e19``
    in float32); a row without a finite guess gets its largest entry.
    """
    count = jnp.maximum(jnp.sum(valid, axis=-1), 1).astype(x.dtype)
    top = jnp.max(jnp.where(valid, jnp.abs(x), 0), axis=-1)
    exponent = jnp.clip(jnp.frexp(jnp.where(top > 0, top, 1))[1], -100, 100)
    scale = power_of_two(-exponent, x.dtype)
    y = x * scale[..., None]
    mean = jnp.sum(jnp.where(valid, y, 0), axis=-1) / count
    var = jnp.sum(jnp.where(valid, (y - mean[..., None]) ** 2, 0), axis=-1) / count
    tail = jnp.clip(rank.astype(x.dtype) / count, 1e-7, 1 - 1e-7)
    guess = (mean + jnp.sqrt(var) * ndtri(1 - tail)) / scale
    return jnp.where(jnp.isfinite(guess), guess, top)


def ordered_keys(x: Array) -> Array:
    """Signed integers whose order is the order of the floats ``x`` (``-0 == +0``, NaN last).

    Read from the bits, so that subnormal numbers keep their order: the device's float
    comparisons flush them to zero. Signed rather than unsigned: XLA's CPU backend vectorises
    signed compares and reductions.
    """
    int_type = jnp.int32 if x.dtype.itemsize <= 4 else jnp.int64
    raw = jax.lax.bitcast_convert_type(x, int_type)
    raw = jnp.where(magnitude_bits(x) == 0, 0, raw)  # -0 becomes +0
    return jnp.where(raw < 0, raw ^ jnp.array(jnp.iinfo(int_type).max, int_type), raw)


def key_midpoint(lo: Array, hi: Array) -> Array:
    """The float halfway between ``lo < hi`` in :func:`ordered_keys` order: bisection on it
    reaches adjacent floats in at most 32 (float32) or 64 (float64) steps whatever the range,
    where halving ``[lo, hi]`` needs ~130 steps from ``±1e30`` down to a root near 1e-9. Within
    one binade it is the arithmetic midpoint."""
    a, b = ordered_keys(lo), ordered_keys(hi)
    key = (a >> 1) + (b >> 1) + (a & b & 1)  # floor((a + b) / 2) without overflow
    raw = jnp.where(key < 0, key ^ jnp.array(jnp.iinfo(key.dtype).max, key.dtype), key)
    return jax.lax.bitcast_convert_type(raw, lo.dtype)


def key_span(lo: Array, hi: Array) -> Array:
    """How many floats lie between ``lo <= hi`` (as a float: no integer overflow)."""
    return ordered_keys(hi).astype(lo.dtype) - ordered_keys(lo).astype(lo.dtype)


def negate(x: Array) -> Array:
    """``-x`` by flipping the sign bit: float negation inside a fused XLA kernel may flush a
    subnormal ``x`` to 0."""
    int_type = jnp.int32 if x.dtype.itemsize <= 4 else jnp.int64
    raw = jax.lax.bitcast_convert_type(x, int_type)
    return jax.lax.bitcast_convert_type(raw ^ jnp.array(jnp.iinfo(int_type).min, int_type), x.dtype)


def descending_order(x: Array, valid: Array, *, negated: bool = False) -> Array:
    """Stable descending argsort of the real entries of each row (of ``-x`` if ``negated``), the
    padding last. Sorted on :func:`ordered_keys`, so subnormal entries keep their order."""
    keys = ordered_keys(jax.lax.stop_gradient(x))
    key = keys if negated else -1 - keys  # -1 - k orders -x: no overflow, and -0 below +0 only
    return jnp.argsort(jnp.where(valid, key, jnp.iinfo(keys.dtype).max), axis=-1, stable=True)
