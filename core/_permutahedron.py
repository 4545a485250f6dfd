r"""Soft sorting and ranking by projection onto the permutahedron (Blondel et al., ICML 2020).

The permutahedron of ``w`` is ``P(w) = conv{w_pi : pi a permutation}``. With ``rho = (n, n-1, ..., 1)``,
``sort(x) = argmax_{y in P(x)} <y, rho>`` and ``rank(x) = argmax_{y in P(rho)} <y, x>``; the soft
operators add a regulariser ``Q`` (``l2``: ``||y||^2 / 2``; ``kl``: ``<y, log y - 1>``) with strength
``epsilon``:

.. math::

    P_Q(z, w) = \underset{\mu \in P(w)}{\text{argmin}}\ Q(\mu) - \langle \mu, z\rangle,

which reduces to one isotonic regression of the sorted ``z`` (O(n log n) for the sort, O(n) for the
PAV, both on the device). Derivatives: the isotonic solution is piecewise constant on blocks, so its
JVP is a (weighted) block average of the tangent -- O(n), forward and reverse.

Reference: M. Blondel, O. Teboul, Q. Berthet, J. Djolonga, "Fast Differentiable Sorting and Ranking",
ICML 2020, arXiv:2002.08871 (the ``fast-soft-sort`` conventions are kept: ranks start at 1,
``descending=False`` ranks the smallest entry 1 and sorts ascending).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from core._isotonic import PavSolution, isotonic_regression, map_rows, pav_decreasing
from core._rows import (
    as_float_array,
    descending_order,
    row_lengths,
    row_param,
    safe_divide,
    valid_entries,
)

__all__ = ["project_permutahedron", "soft_rank", "soft_sort"]

Regularization = Literal["l2", "kl"]


# ------------------------------------------------------------------------- KL isotonic (PAV)


def _kl_merge(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
    return jnp.logaddexp(a[0], b[0]), jnp.logaddexp(a[1], b[1])


def _kl_value(stats: tuple[Array, Array]) -> Array:
    return stats[0] - stats[1]


def _kl_solve(y: Array, w: Array, lengths: Array) -> tuple[Array, Array]:
    """``argmin_{v dec} <exp(y - v), 1> + <exp(w), v>`` (blocks: ``LSE(y_B) - LSE(w_B)``)."""
    n = y.shape[-1]

    def one_row(y_row: Array, w_row: Array, length: Array) -> PavSolution:
        return pav_decreasing((y_row, w_row), _kl_merge, _kl_value, length)

    sol = map_rows(one_row, y.reshape(-1, n), w.reshape(-1, n), lengths.reshape(-1))
    return sol.values.reshape(y.shape), sol.blocks.reshape(y.shape)


def _segment(values: Array, blocks: Array, reducer: str) -> Array:
    """Per-entry reduction of ``values`` over the entry's block (``"sum"`` or ``"max"``), O(n)."""
    n = values.shape[-1]
    op = jax.ops.segment_sum if reducer == "sum" else jax.ops.segment_max

    def one_row(v: Array, b: Array) -> Array:
        return op(v, b, num_segments=n)[b]

    return jax.vmap(one_row)(values.reshape(-1, n), blocks.reshape(-1, n)).reshape(values.shape)


def _block_softmax(values: Array, blocks: Array, valid: Array) -> Array:
    """``exp(v_i - LSE(v_B))`` for the block ``B`` of each real entry (0 on the padding)."""
    low = jnp.finfo(values.dtype).min
    values = jnp.where(valid, values, low)
    top = _segment(values, blocks, "max")
    e = jnp.where(valid, jnp.exp(values - top), 0)
    return safe_divide(e, _segment(e, blocks, "sum"))


@jax.custom_jvp
def _isotonic_kl(y: Array, w: Array, lengths: Array) -> Array:
    values, _ = _kl_solve(y, w, lengths)
    return jnp.where(valid_entries(y, lengths), values, 0)


@_isotonic_kl.defjvp
def _isotonic_kl_jvp(
    primals: tuple[Array, Array, Array], tangents: tuple[Array, Array, Array]
) -> tuple[Array, Array]:
    # v_B = LSE(y_B) - LSE(w_B): dv_B = sum_B softmax_B(y) dy - sum_B softmax_B(w) dw.
    y, w, lengths = primals
    dy, dw, _ = tangents
    values, blocks = _kl_solve(y, w, lengths)
    valid = valid_entries(y, lengths)
    weighted = _block_softmax(y, blocks, valid) * dy - _block_softmax(w, blocks, valid) * dw
    dv = _segment(jnp.where(valid, weighted, 0), blocks, "sum")
    return jnp.where(valid, values, 0), jnp.where(valid, dv, 0)


def _isotonic(y: Array, w: Array, lengths: Array, regularization: str) -> Array:
    """Decreasing isotonic fit of the problem of each regulariser (fast-soft-sort's ``Isotonic``)."""
    if regularization == "l2":  # argmin_{v dec} ||v - (y - w)||^2 / 2
        return isotonic_regression(y - w, lengths=lengths)
    if regularization == "kl":
        return _isotonic_kl(y, w, lengths)
    raise ValueError(f"regularization must be 'l2' or 'kl', got {regularization!r}")


# ------------------------------------------------------------------------------ sort helpers


def _unpermute(sorted_values: Array, order: Array) -> Array:
    """``out[..., order[j]] = sorted_values[..., j]`` as a gather (cheap to differentiate)."""
    positions = jnp.broadcast_to(jnp.arange(order.shape[-1], dtype=order.dtype), order.shape)
    inverse = jnp.put_along_axis(jnp.zeros_like(order), order, positions, axis=-1, inplace=False)
    return jnp.take_along_axis(sorted_values, inverse, axis=-1)


def _rho(x: Array, lengths: Array) -> Array:
    """``(L, L-1, ..., 1, 0, ..., 0)`` for a row of length ``L``."""
    positions = jnp.arange(x.shape[-1], dtype=x.dtype)
    return jnp.maximum(lengths[..., None].astype(x.dtype) - positions, 0)


def _projection(z: Array, w: Array, lengths: Array, regularization: str) -> Array:
    """``P_Q(z, w)`` on real entries (``w`` sorted decreasingly, 0 on the padding)."""
    valid = valid_entries(z, lengths)
    z = jnp.where(valid, z, 0)
    order = descending_order(z, valid)
    s = jnp.take_along_axis(z, order, axis=-1)
    dual = _isotonic(s, w, lengths, regularization)
    primal = jnp.where(valid, s - dual, 0)
    return jnp.where(valid, _unpermute(primal, order), 0)


# ---------------------------------------------------------------------------------- public API


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
    return _projection(z_, w_, lengths_, str(regularization))


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
    The hard ranks, ``argmax_{mu in P(rho)} <mu, ±x>``, are recovered exactly once ``epsilon`` is
    below a data-dependent value; large ``epsilon`` pulls every rank towards the mean ``(n+1)/2``.

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
        ICML 2020, arXiv:2002.08871.

    Example:
        >>> soft_rank(jnp.array([5.0, 1.0, 2.0]), epsilon=2.0)
        Array([3.  , 1.25, 1.75], dtype=float32)
    """
    x_ = as_float_array(x)
    lengths_ = row_lengths(x_, lengths)
    eps = row_param(x_, epsilon)[..., None]
    z = (-x_ if descending else x_) / eps
    rho = _rho(x_, lengths_)
    valid = valid_entries(x_, lengths_)
    if regularization == "kl":
        log_rho = jnp.log(jnp.where(valid, rho, 1))
        return jnp.where(valid, jnp.exp(_projection(z, log_rho, lengths_, "kl")), 0)
    return _projection(z, rho, lengths_, str(regularization))


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

    computed as ``sign * (rho / epsilon - v)`` with ``v`` the decreasing isotonic fit of
    ``rho / epsilon - sort_desc(sign * x)`` (``l2``; the analogous KL problem for ``kl``).
    Tends to the hard sort as ``epsilon -> 0``; large ``epsilon`` pulls every value to the mean.

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
        ICML 2020, arXiv:2002.08871.

    Example:
        >>> [round(float(v), 4) for v in soft_sort(jnp.array([5.0, 1.0, 2.0]), epsilon=1.0)]
        [1.6667, 2.6667, 3.6667]
    """
    x_ = as_float_array(x)
    lengths_ = row_lengths(x_, lengths)
    valid = valid_entries(x_, lengths_)
    eps = row_param(x_, epsilon)[..., None]
    sign = 1 if descending else -1
    values = jnp.where(valid, sign * x_, 0)
    order = descending_order(values, valid)
    s = jnp.take_along_axis(values, order, axis=-1)
    w = _rho(x_, lengths_) / eps
    v = _isotonic(w, s, lengths_, str(regularization))
    return jnp.where(valid, sign * (w - v), 0)
