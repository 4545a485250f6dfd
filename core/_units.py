r"""Per-row units for the sparse top-k problems: exact power-of-two rescalings of ``x`` and ``eps``.

Measured reason: the sparse solvers work in the units of ``x``, with ``eps`` entering as
``(x - tau) / eps``, ``eps^r`` (``r = 1 / (p - 1)``; ``eps^3`` overflows float32 from ``eps ~ 7e12``) and
``x - tau`` (overflowing near ``±3.4e38``); and XLA flushes a subnormal ``eps`` to zero. Both
operators are homogeneous (Sander et al. 2023, the mask and the magnitude operator):

.. math::

    \text{mask}(x, \varepsilon) = \text{mask}(x / c, \varepsilon / c), \qquad
    \text{mag}(x, \varepsilon) = c\, \text{mag}(x / c, \varepsilon / c^{2 - p}),

so each row is solved in units where its numbers are moderate: ``c = 2^j`` keeps every rescaling
exact (subnormals are rebuilt from their bits), and what a down-scaling flushes to zero lies far
below the answer's resolution.

* mask: ``c = max(eps, max|x| 2^-100)``, rounded down to a power of two: ``eps / c`` in
  ``[2^-41, 1)`` while ``max|x| / eps <= 2^140`` (:data:`MASK_MAX_RATIO_LOG2`), ``|x| / c <= 2^101``.
* magnitude: ``c = max|x|`` (rounded likewise), ``x / c`` in ``[-1, 1]``. The regularisation
  ``eps / c^(2 - p)`` is not a power of two in general (one rounding); above
  ``2^((64 + log2 n) / r)`` the answer is ``x`` to within ``2^-64`` relative, and it is held there.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

from core._domain import MASK_MAX_RATIO_LOG2
from core._rows import is_subnormal, magnitude_bits, power_of_two, times_power_of_two

__all__ = [
    "MASK_MAX_RATIO_LOG2",
    "exponent",
    "magnitude_units",
    "mask_units",
    "scale_by_power_of_two",
]


def exponent(v: Array) -> Array:
    """``e`` with ``2^(e-1) <= |v| < 2^e`` (``frexp``'s), read from the bits (subnormals too); 0 for 0."""
    finfo = jnp.finfo(v.dtype)
    bits = magnitude_bits(v)
    field = (bits >> finfo.nmant).astype(jnp.int32)
    significand = (bits & ((1 << finfo.nmant) - 1)).astype(v.dtype)
    subnormal = (
        jnp.frexp(jnp.where(significand > 0, significand, 1))[1] + finfo.minexp - finfo.nmant
    )
    normal = field - (finfo.maxexp - 2)
    return jnp.where(bits == 0, 0, jnp.where(field == 0, subnormal, normal)).astype(jnp.int32)


@jax.custom_jvp
def scale_by_power_of_two(v: Array, exponent: Array) -> Array:
    """``v * 2^exponent`` (``exponent`` an int array broadcast against ``v``), exact wherever the
    result is a normal number (a subnormal ``v`` is rebuilt from its bits); linear in ``v``."""
    half = exponent // 2
    rest = exponent - half
    down = v * power_of_two(half, v.dtype) * power_of_two(rest, v.dtype)
    # Up: a normal v in two steps (one factor 2^exponent may overflow where v * 2^exponent does
    # not); a subnormal v in one rebuild, since its first step may still be subnormal, i.e. 0.
    up = times_power_of_two(times_power_of_two(v, jnp.maximum(half, 0)), jnp.maximum(rest, 0))
    up = jnp.where(is_subnormal(v), times_power_of_two(v, jnp.maximum(exponent, 0)), up)
    return jnp.where(exponent >= 0, up, down)


@scale_by_power_of_two.defjvp
def _scale_jvp(primals: tuple[Array, Array], tangents: tuple[Array, Array]) -> tuple[Array, Array]:
    v, exponent = primals
    # Two exact constant factors: linear in the tangent, so JAX transposes it for reverse mode.
    half = exponent // 2
    factors = power_of_two(half, v.dtype), power_of_two(exponent - half, v.dtype)
    return scale_by_power_of_two(v, exponent), tangents[0] * factors[0] * factors[1]


def _row_top(x: Array, valid: Array) -> Array:
    return jnp.max(jnp.where(valid, jnp.abs(x), 0), axis=-1)


def mask_units(x: Array, eps: Array, valid: Array) -> tuple[Array, Array]:
    """``(x / c, eps / c)`` for the mask, ``c = 2^j`` per row (see the module docstring).

    ``j = max(e(eps), e(max|x|) - 100)`` (``e`` the binary exponent): ``eps / c`` in ``[1/2, 1)`` and
    ``|x| / c <= 2^100``, or, past ``max|x| / eps = 2^100``, ``eps / c`` down to ``2^-41`` at
    ``max|x| / eps = 2^140`` (:data:`MASK_MAX_RATIO_LOG2`). Every solver (threshold, PAV,
    Dykstra) was measured exact in those units.
    """
    j = jnp.maximum(exponent(eps), exponent(_row_top(x, valid)) - 100)
    return scale_by_power_of_two(x, -j[..., None]), scale_by_power_of_two(eps, -j)


def magnitude_units(
    x: Array, eps: Array, valid: Array, p: float, r: float
) -> tuple[Array, Array, Array]:
    """``(x / c, eps / c^(2 - p), log2 c)`` for the magnitude operator (module docstring)."""
    n = x.shape[-1]
    j = exponent(_row_top(x, valid))
    # eps * 2^(-j (2 - p)) in two exact halves and one rounded factor, held below the bound.
    whole = jnp.floor(-j * (2 - p)).astype(jnp.int32)
    fraction = jnp.exp2((-j * (2 - p) - whole).astype(x.dtype))
    bound_log2 = min((64 + math.log2(max(n, 2))) / r, float(jnp.finfo(x.dtype).maxexp - 8))
    held = exponent(eps) + whole >= bound_log2
    scaled = scale_by_power_of_two(eps, whole) * fraction
    scaled = jnp.where(held, jnp.asarray(2.0**bound_log2, x.dtype), scaled)
    return scale_by_power_of_two(x, -j[..., None]), scaled, j
