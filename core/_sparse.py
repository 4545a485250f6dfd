r"""Sparse soft top-k operators with p-norm regularisation (Sander et al., ICML 2023).

The soft top-k mask is the regularised linear program over the permutahedron ``P(1_k)``

.. math::

    \mathrm{topk}_\varepsilon(x) = \arg\max_{y \in [0,1]^n,\ \sum_i y_i = k}
        \langle y, x\rangle - \frac{\varepsilon}{p} \|y\|_p^p ,

which keeps exact zeros for every ``p > 1`` and tends to the hard top-k mask as ``eps -> 0``. Three
exact or approximate solvers compute it: ``"threshold"`` (the default: one scalar per row, without
sorting; for the mask, rows with ``k <= 16`` are solved on their largest values,
:mod:`core._candidates`), ``"pav"`` (sort, then pool adjacent violators on the device) and
``"dykstra"`` (sort, then the paper's GPU-friendly alternating projections, approximate). All of
them return the row threshold ``tau``; the outputs and their derivatives are element-wise functions
of ``x`` and ``tau``.

Derivatives are hand-written ``custom_jvp`` rules, linear in the tangent (so JAX transposes them for
reverse mode), ``O(n)`` per row: with the pooled block ``F`` and ``d_i = (r/eps) z_i^(r-1)``,
``z_i = (x_i - tau)/eps``, ``r = 1/(p-1)``, the mask's JVP is ``d_i (t_i - sum_F d t / sum_F d)``.

References:
    M. E. Sander, J. Puigcerver, J. Djolonga, G. Peyré, M. Blondel. *Fast, Differentiable and Sparse
    Top-k: a Convex Analysis Perspective.* ICML 2023, arXiv:2302.01425.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from core._candidates import mask_threshold
from core._rows import as_float_array, row_k, row_lengths, row_param, safe_divide, valid_entries
from core._sparse_isotonic import sorted_threshold
from core._threshold import exponent, power, solve_threshold
from core._units import magnitude_units, mask_units, scale_by_power_of_two

Solver = Literal["auto", "threshold", "pav", "dykstra"]
SOLVERS: tuple[str, ...] = ("auto", "threshold", "pav", "dykstra")


def _threshold(
    a: Array, k: Array, eps: Array, lengths: Array, p: float, solver: str, magnitude: bool
) -> Array:
    valid = valid_entries(a, lengths)
    if solver in ("auto", "threshold"):
        return solve_threshold(a, valid, k, eps, p=p, magnitude=magnitude).tau
    if solver == "pav":
        return sorted_threshold(a, valid, k, eps, p=p, magnitude=magnitude, method="pav")
    if solver == "dykstra":
        return sorted_threshold(a, valid, k, eps, p=p, magnitude=magnitude, method="dykstra")
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _mask_threshold(
    x: Array, k: Array, eps: Array, lengths: Array, p: float, solver: str
) -> tuple[Array, Array]:
    """``x`` shifted per row and the mask's ``tau`` in those units: ``z = (x_shifted - tau)/eps``.

    ``"auto"``/``"threshold"``: rows with small k are solved on their largest values
    (:func:`core._candidates.mask_threshold`, shifted by the k-th), the others by the sort-free
    solver (unshifted). The other solvers give ``tau`` in the units of ``x``.
    """
    if solver not in ("auto", "threshold"):
        return x, _threshold(x, k, eps, lengths, p, solver, magnitude=False)
    batch, n = x.shape[:-1], x.shape[-1]

    def general(x_: Array, valid_: Array, k_: Array, eps_: Array) -> Array:
        return solve_threshold(x_, valid_, k_, eps_, p=p, magnitude=False).tau

    shift, tau = mask_threshold(
        x.reshape(-1, n),
        valid_entries(x, lengths).reshape(-1, n),
        k.reshape(-1),
        eps.reshape(-1),
        exponent(p),
        general,
    )
    shift = shift.reshape((*batch, 1))
    # An unshifted row keeps x itself (x - 0 would flush its subnormal entries).
    return jnp.where(shift != 0, x - shift, x), tau.reshape(batch)


# ----------------------------------------------------------------------------------------- mask


def _mask_parts(
    x: Array, tau: Array, k: Array, eps: Array, valid: Array, r: float
) -> tuple[Array, Array, Array]:
    """``z = (x - tau)/eps`` and the saturated (top) and pooled (block) entries of each row.

    A block whose tops already carry all of ``k`` is empty: its members are exactly 0 (rounding in
    ``tau`` must not leave them a 1e-16 share). Ties at the threshold with ``eps`` below the float
    spacing there: ``x - tau`` cannot be resolved, so ``tau`` lands one ulp from the tied value
    (more than ``k`` tops, or a block of zeros); see :func:`_tied_block`.
    """
    t = tau[..., None]
    top = valid & ((x - t) / eps[..., None] >= 1)
    t = _onto_ties(x, t, top, k)
    z = (x - t) / eps[..., None]
    top = valid & (z >= 1)
    room = (jnp.sum(top, axis=-1) < k)[..., None]
    block = valid & (z >= 0) & (z < 1) & room
    weight = (k - jnp.sum(top, axis=-1)).astype(x.dtype)
    return _tied_block(z, block, weight, r), top, block


def _onto_ties(x: Array, t: Array, top: Array, k: Array) -> Array:
    """``tau`` moved onto the smallest top value where more than ``k`` entries are tops and the
    excess is a group of equal values: ties straddling a rounded ``tau`` (each top carries 1)."""
    tie = jnp.min(jnp.where(top, x, jnp.inf), axis=-1, keepdims=True)
    tied = jnp.sum(top & (x == tie), axis=-1)
    count = jnp.sum(top, axis=-1)
    straddle = ((count > k) & (count - tied < k) & (tied > 1))[..., None]
    return jnp.where(straddle, tie, t)


def _tied_block(z: Array, block: Array, mass: Array, r: float) -> Array:
    """``z`` with a block of exact ties at ``tau`` (all ``z = 0``) given its exact value.

    Equal scores get equal outputs, so each carries ``mass / |block|``: ``z = (mass / |block|)^(1/r)``
    (the limit of the tied block as the rounding of ``tau`` vanishes; derivatives use it too).
    """
    count = jnp.sum(block, axis=-1)
    tied = (jnp.sum(jnp.where(block, z, 0), axis=-1) == 0) & (count > 0) & (mass > 0)
    share = safe_divide(mass, count.astype(z.dtype))
    level = jnp.where(tied, share, 1) ** (1.0 / r)
    return jnp.where(block & tied[..., None], level[..., None], z)


def _carry_block_mass(pooled: Array, block: Array, mass: Array, cap: Array) -> Array:
    """Rescale the block's outputs so that they carry exactly ``mass`` (each at most ``cap``).

    At the exact ``tau`` the rescale factor is 1. It matters when ``eps`` is tiny against ``|x|``:
    ``x - tau`` then keeps few significant digits and one ulp of ``tau`` moves the block's outputs
    by far more than rounding (e.g. 1.6e-6 for ``|x| ~ 4.7, eps = 1e-9, p = 4/3``); the constraint
    ``sum_block = W`` is what the solution must satisfy, so it is imposed exactly.
    """
    total = jnp.sum(jnp.where(block, pooled, 0), axis=-1)
    factor = jnp.where(total > 0, safe_divide(mass, total), 1)
    return jnp.minimum(pooled * factor[..., None], cap)


def _mask_from_parts(z: Array, top: Array, block: Array, k: Array, r: float) -> Array:
    pooled = power(jnp.where(block, z, 0), r)
    weight = (k - jnp.sum(top, axis=-1)).astype(z.dtype)
    pooled = _carry_block_mass(pooled, block, weight, jnp.ones((), z.dtype))
    return jnp.where(top, 1, jnp.where(block, pooled, 0)).astype(z.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _mask(x: Array, k: Array, eps: Array, lengths: Array, p: float, solver: str) -> Array:
    shifted, tau = _mask_threshold(x, k, eps, lengths, p, solver)
    z, top, block = _mask_parts(shifted, tau, k, eps, valid_entries(x, lengths), exponent(p))
    return _mask_from_parts(z, top, block, k, exponent(p))


@_mask.defjvp
def _mask_jvp(
    p: float, solver: str, primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    x, k, eps, lengths = primals
    dx, _, deps, _ = tangents
    r = exponent(p)
    valid = valid_entries(x, lengths)
    shifted, tau = _mask_threshold(x, k, eps, lengths, p, solver)
    z, top, free = _mask_parts(shifted, tau, k, eps, valid, r)
    y = _mask_from_parts(z, top, free, k, r)
    # y = z^r on the pooled block F = {0 < z < 1}, z = (x - tau)/eps;  sum_F dy = 0 fixes dtau.
    d = jnp.where(free, (r / eps[..., None]) * power(jnp.where(free, z, 0), r - 1.0), 0)
    shifted = jnp.where(free, dx - z * deps[..., None], 0)
    dtau = safe_divide(jnp.sum(d * shifted, axis=-1), jnp.sum(d, axis=-1))
    return y, d * (shifted - dtau[..., None])


# ------------------------------------------------------------------------------------ magnitude


def _magnitude_parts(
    x: Array, tau: Array, k: Array, eps: Array, valid: Array, r: float
) -> tuple[Array, Array, Array, Array, Array]:
    """``z = (|x| - tau)_+/eps``, ``u = z^r``, the top and block entries and ``tau`` of each row.

    Tops satisfy ``u >= tau`` and keep ``x``; the block ``|x| > tau, u < tau`` is empty when the tops
    already carry all of ``k`` (its weight ``W = k - #tops`` is 0: every non-top output is 0).
    Ties at the threshold are handled as in :func:`_mask_parts` (each tie carries ``W tau / m``).
    """
    a = jnp.abs(x)
    t = tau[..., None]
    top = valid & (a > t) & (power(jnp.maximum(a - t, 0) / eps[..., None], r) >= t)
    t = _onto_ties(a, t, top, k)
    z = jnp.maximum(a - t, 0) / eps[..., None]
    u = power(z, r)
    top = valid & (a > t) & (u >= t)
    room = (jnp.sum(top, axis=-1) < k)[..., None]
    block = valid & (a >= t) & (a > 0) & (u < t) & room
    weight = (k - jnp.sum(top, axis=-1)).astype(x.dtype)
    z = _tied_block(z, block, weight * t[..., 0], r)
    return z, power(z, r), top, block, t[..., 0]


def _magnitude_from_parts(
    x: Array, tau: Array, u: Array, top: Array, block: Array, k: Array
) -> Array:
    weight = (k - jnp.sum(top, axis=-1)).astype(x.dtype)
    t = tau[..., None]
    u = _carry_block_mass(u, block, weight * tau, t)
    pooled = jnp.sign(x) * (u + jnp.abs(x) - t)
    return jnp.where(top, x, jnp.where(block, pooled, 0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _magnitude(x: Array, k: Array, eps: Array, lengths: Array, p: float, solver: str) -> Array:
    tau = _threshold(jnp.abs(x), k, eps, lengths, p, solver, magnitude=True)
    valid = valid_entries(x, lengths)
    _, u, top, block, tau = _magnitude_parts(x, tau, k, eps, valid, exponent(p))
    return _magnitude_from_parts(x, tau, u, top, block, k)


@_magnitude.defjvp
def _magnitude_jvp(
    p: float, solver: str, primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    x, k, eps, lengths = primals
    dx, _, deps, _ = tangents
    r = exponent(p)
    valid = valid_entries(x, lengths)
    tau = _threshold(jnp.abs(x), k, eps, lengths, p, solver, magnitude=True)
    z, u, top, block, tau = _magnitude_parts(x, tau, k, eps, valid, r)
    out = _magnitude_from_parts(x, tau, u, top, block, k)
    # On the block B: out = sign(x)(u + |x| - tau), u = z^r, sum_B u = W tau with W = k - #tops.
    weight = (k - jnp.sum(top, axis=-1)).astype(x.dtype)
    sign = jnp.sign(x)
    d = jnp.where(block, (r / eps[..., None]) * power(jnp.where(block, z, 0), r - 1.0), 0)
    shifted = jnp.where(block, sign * dx - z * deps[..., None], 0)
    dtau = safe_divide(jnp.sum(d * shifted, axis=-1), jnp.sum(d, axis=-1) + weight)[..., None]
    du = d * (shifted - dtau)
    dout = jnp.where(top, dx, jnp.where(block, sign * (du + sign * dx - dtau), 0))
    return out, dout


# ---------------------------------------------------------------------------------- public API


def _prepare(
    x: ArrayLike, k: ArrayLike, epsilon: ArrayLike, p: float, lengths: ArrayLike | None
) -> tuple[Array, Array, Array, Array]:
    if not p > 1:
        raise ValueError(f"p must be > 1, got {p}")
    x_ = as_float_array(x)
    lengths_ = row_lengths(x_, lengths)
    return x_, row_k(x_, k, lengths_), row_param(x_, epsilon), lengths_


@functools.partial(jax.jit, static_argnames=("p", "solver"))
def sparse_topk_mask(
    x: ArrayLike,
    k: ArrayLike,
    *,
    epsilon: ArrayLike = 0.1,
    p: float = 4.0 / 3.0,
    solver: Solver = "auto",
    lengths: ArrayLike | None = None,
) -> Array:
    r"""Sparse soft top-k mask: ``argmax_{y in P(1_k)} <y, x> - (eps/p) ||y||_p^p`` on the last axis.

    Entries are in ``[0, 1]`` and sum to ``k``; those far below the k-th value are exactly 0, those
    far above exactly 1. ``p = 2`` gives the Euclidean projection of ``x/eps`` onto the hypersimplex
    (piecewise linear), ``p = 4/3`` (default) a continuously differentiable operator.

    Args:
        x: scores ``(..., n)``, float32 or float64.
        k: int or int array ``(...)`` -- data, so a new k never recompiles; clipped to ``[0, length]``.
        epsilon: regularisation strength ``> 0`` (scalar or ``(...)``), in the units of ``x``.
        p: the p-norm exponent, ``p > 1`` (static). Closed-form block roots for 2 and 4/3.
        solver: ``"auto"``/``"threshold"`` (exact; rows with ``k <= 16`` and ``p`` 2 or 4/3 on
            their largest values, the rest sort-free), ``"pav"`` (sort + exact pool adjacent
            violators on the device), ``"dykstra"`` (sort + Dykstra, approximate, ``p = 2`` only).
        lengths: optional ``(...)`` number of real entries per row; the tail gets exactly 0.

    Returns:
        The soft mask, shape and dtype of ``x``.

    References:
        Sander et al., *Fast, Differentiable and Sparse Top-k: a Convex Analysis Perspective*,
        ICML 2023.

    Example:
        >>> sparse_topk_mask(jnp.array([0.3, 0.1, 0.25, -0.4, 0.2]), 2, epsilon=0.1, p=2.0)
        Array([1.  , 0.  , 0.75, 0.  , 0.25], dtype=float32)
    """
    x_, k_, eps_, lengths_ = _prepare(x, k, epsilon, p, lengths)
    x_, eps_ = mask_units(x_, eps_, valid_entries(x_, lengths_))  # exact at every scale
    return _mask(x_, k_, eps_, lengths_, float(p), str(solver))


@functools.partial(jax.jit, static_argnames=("p", "solver"))
def sparse_topk_values(
    x: ArrayLike,
    k: ArrayLike,
    *,
    epsilon: ArrayLike = 0.1,
    p: float = 4.0 / 3.0,
    solver: Solver = "auto",
    lengths: ArrayLike | None = None,
) -> Array:
    """``x * sparse_topk_mask(x, k, ...)``: a differentiable surrogate of the top-k values in place.

    The paper has no soft *values* operator; this product is the natural surrogate (its derivative
    is ``mask + x * d mask``). Same arguments as :func:`sparse_topk_mask`.
    """
    x_ = as_float_array(x)
    return x_ * sparse_topk_mask(x_, k, epsilon=epsilon, p=p, solver=solver, lengths=lengths)


@functools.partial(jax.jit, static_argnames=("p", "solver"))
def sparse_topk_magnitude(
    x: ArrayLike,
    k: ArrayLike,
    *,
    epsilon: ArrayLike = 0.1,
    p: float = 4.0 / 3.0,
    solver: Solver = "auto",
    lengths: ArrayLike | None = None,
) -> Array:
    r"""Sparse soft top-k in magnitude (pruning), with the paper's de-biasing rescale.

    With ``u* = argmax_u <u, x> - g*(u) - eps Omega(u)`` (``g(x) = 1/2 sum_{i<=k} |x|^2_[i]``, the
    top-k-in-magnitude energy) the output is ``u* + eps grad Omega(u*)``: unpooled top entries are
    returned exactly, entries outside the support are exactly 0, and the few entries pooled around
    the k-th magnitude are shrunk smoothly. Computed as ``u + (s - v)`` (never NaN) and exact for any
    ``p > 1`` (unlike the official code's general-p path, whose bisection bracket
    ``min(s) - eps max(w)^(1/(q-1))`` is not a lower bound of the magnitude block root).

    Args: as :func:`sparse_topk_mask`.

    Returns:
        Same shape and dtype as ``x``, signs kept.

    Example:
        >>> x = jnp.array([1.0, -0.95, 0.5, 3.0, -0.2, 0.9])
        >>> sparse_topk_magnitude(x, 3, epsilon=0.3, p=2.0).round(4)
        Array([ 0.9028, -0.6861,  0.    ,  3.    , -0.    ,  0.4694], dtype=float32)
    """
    x_, k_, eps_, lengths_ = _prepare(x, k, epsilon, p, lengths)
    valid = valid_entries(x_, lengths_)
    x_, eps_, log2_scale = magnitude_units(x_, eps_, valid, float(p), exponent(p))
    out = _magnitude(x_, k_, eps_, lengths_, float(p), str(solver))
    return scale_by_power_of_two(out, log2_scale[..., None])  # exact at every scale
