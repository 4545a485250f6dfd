r"""SOFT top-k: the top-k mask as an entropic optimal transport plan (Xie et al., NeurIPS 2020).

Each row ``x`` (``n`` real entries) is transported onto a few anchors on the real line with the
squared cost ``C_ij = (x_i - a_j)**2`` and entropic regularisation ``epsilon``:

.. math::

    \Gamma^\star = \underset{\Gamma \ge 0,\ \Gamma 1 = \mu,\ \Gamma^\top 1 = \nu}{\text{argmin}}
        \langle C, \Gamma \rangle + \epsilon \sum_{ij} \Gamma_{ij} \log \Gamma_{ij},
    \qquad \mu = 1_n / n .

* Mask (two anchors ``a = (0, 1)``, ``nu = ((n - k)/n, k/n)``): ``mask = n * Gamma[:, 1]``. Eliminating
  the row potentials, ``mask_i = sigmoid((C_i0 - C_i1 + g_1 - g_0) / eps)`` with
  ``C_i0 - C_i1 = 2 x_i - 1``, i.e. ``mask_i = sigmoid((2 x_i + b) / eps)`` with one scalar ``b`` per
  row fixed by ``sum_i mask_i = k``. That monotone 1-D root is solved exactly by a safeguarded Newton
  method (no Sinkhorn iterations); a log-domain Sinkhorn is kept as a cross-check.
* Sorted (``k + 1`` anchors ``(k, k-1, ..., 1, 0)``, ``nu = (1/n, ..., 1/n, (n - k)/n)``): column ``j``
  of ``n * Gamma`` is the soft one-hot of the ``(j+1)``-th largest entry. Solved by log-domain Sinkhorn.

Both are differentiated by the implicit function theorem on the optimality conditions (custom JVP,
linear in the tangent, so JAX transposes it for reverse mode): O(n) per row for the mask,
O(n k^2 + k^3) for the sorted variant. The official code selects the k *smallest* entries and
normalises the cost by its maximum over the whole batch; here the k *largest* are selected and the
optional normalisation is per row.

Reference: Y. Xie, H. Dai, M. Chen, B. Dai, T. Zhao, H. Zha, W. Wei, T. Pfister, "Differentiable
Top-k with Optimal Transport", NeurIPS 2020, arXiv:2002.06504.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from core._hard import _key_to_float, _kth_largest_key, _ordered_keys
from core._lockstep import iterate_rows
from core._rows import (
    as_float_array,
    finite,
    gap_ratio,
    inverse,
    normal_upper_quantile,
    row_k,
    row_lengths,
    row_param,
    safe_divide,
    valid_entries,
)

__all__ = ["SoftTopkInfo", "SoftTopkSorted", "soft_topk_mask", "soft_topk_sorted"]


class SoftTopkInfo(NamedTuple):
    """Diagnostics of the per-row solves (nothing is raised inside ``jit``)."""

    iterations: Array  # shape=(...), int32: iterations used by each row
    converged: Array  # shape=(...), bool: the row met its tolerance
    error: Array  # shape=(...), float: L1 marginal error of the plan normalised to mass 1


class SoftTopkSorted(NamedTuple):
    """Output of :func:`soft_topk_sorted`."""

    values: Array  # shape=(..., k): soft top-k values, largest first
    assignment: Array  # shape=(..., k, n): row j is the soft one-hot of the (j+1)-th largest
    info: SoftTopkInfo


# ---------------------------------------------------------------------------------------------
# Shared row preparation.


def _prepare(
    x: ArrayLike, epsilon: ArrayLike, lengths: ArrayLike | None
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Float scores, eps, lengths, valid entries, the row's max (the shift) and min.

    The padded tail is replaced by the row's max. ``-inf`` scores (masked logits) are replaced, as in
    the official code, by ``min - max(max - min, 1)`` over the row's finite real entries
    (derivative 0); ``+inf`` and NaN scores are not supported. The finite-only max and min take a
    pass over the data only when some row holds a ``-inf``.
    """
    x = as_float_array(x)
    lengths_ = row_lengths(x, lengths)
    # Without lengths every entry is real: a constant mask lets XLA drop the masking selects (and
    # reduce the input in place instead of a masked copy of it).
    valid = jnp.ones(x.shape, bool) if lengths is None else valid_entries(x, lengths_)
    eps = row_param(x, epsilon)
    sx = jax.lax.stop_gradient(x)
    top = jnp.max(jnp.where(valid, sx, -jnp.inf), axis=-1)
    bottom = jnp.min(jnp.where(valid, sx, jnp.inf), axis=-1)

    def finite_range(_: None) -> tuple[Array, Array]:
        finite = valid & jnp.isfinite(sx)
        high = jnp.max(jnp.where(finite, sx, -jnp.inf), axis=-1)
        low = jnp.min(jnp.where(finite, sx, jnp.inf), axis=-1)
        return high, low

    def given_range(_: None) -> tuple[Array, Array]:
        return top, bottom

    high, low = jax.lax.cond(jnp.any(bottom == -jnp.inf), finite_range, given_range, None)
    any_finite = jnp.isfinite(high)  # False for empty rows and rows of -inf only
    shift = jnp.where(any_finite, high, 0)
    low = jnp.where(any_finite, low, 0)
    floor = jnp.where(any_finite, low - jnp.maximum(shift - low, 1), 0)
    x = jnp.where(valid, x, shift[..., None])
    x = jnp.where(x == -jnp.inf, floor[..., None], x)
    row_min = jnp.where(bottom == -jnp.inf, floor, low)
    return x, eps, lengths_, valid, shift, row_min


def _rescaled(eps: Array, x: Array, valid: Array, anchor_max: float) -> Array:
    """``eps * max_ij (x_i - a_j)^2`` over the real entries and anchors in ``[0, anchor_max]``,
    multiplied in two steps (the square alone overflows from |x| ~ 1.8e19 in float32)."""
    far = jnp.maximum(jnp.abs(x), jnp.abs(x - anchor_max))
    far = jnp.max(jnp.where(valid, far, 0), axis=-1)
    return (eps * far) * far


# ---------------------------------------------------------------------------------------------
# The two-anchor mask: sigmoid form, exact root in the row offset, implicit JVP.


@jax.custom_jvp
def _scores(x: Array, eps: Array, shift: Array) -> Array:
    """``u = 2 (x - shift) / eps`` per row, held within ``±finfo.max / 8`` (saturated beyond).

    Exact for every finite ``x`` and ``eps > 0``. With every ``eps >= 2**-100`` three roundings
    suffice: ``(h x - h shift) * (2 / (h eps))`` with a per-row factor (never a division by a
    broadcast ``eps``, which XLA turns into a multiplication by a flushed ``1 / eps`` beyond
    ``2**126``) and ``h = 2**-4`` for ``eps >= 1`` (so that ``x - shift`` cannot overflow where
    ``u`` is finite; what ``h`` flushes is below ``2**-122 / eps``). Smaller ``eps`` (the device
    flushes subnormal operands, which then matter) take :func:`core._rows.gap_ratio`.

    ``shift`` is a reference score held constant: the mask does not depend on it (the offset
    absorbs it). The rule makes the bitwise computation differentiable to every order.
    """
    big = jnp.finfo(x.dtype).max / 8
    shift = shift[..., None]

    def exact(_: None) -> Array:
        return 2 * gap_ratio(x, shift, eps[..., None])

    def rounded(_: None) -> Array:
        h = jnp.where(eps >= 1, 2.0**-4, 1.0).astype(x.dtype)
        factor = (2 / (h * eps))[..., None]
        return (x * h[..., None] - shift * h[..., None]) * factor

    u = jax.lax.cond(jnp.all(eps >= 2.0**-100), rounded, exact, None)
    return jnp.clip(u, -big, big)


@_scores.defjvp
def _scores_jvp(primals: tuple[Array, ...], tangents: tuple[Array, ...]) -> tuple[Array, Array]:
    x, eps, shift = primals
    dx, deps = tangents[0], tangents[1]
    u = _scores(x, eps, shift)
    inv = inverse(eps)[..., None]
    return u, 2 * dx * inv - finite(u * inv) * deps[..., None]


@jax.custom_jvp
def _sigmoid_mask(x: Array, eps: Array, shift: Array, offset: Array, active: Array) -> Array:
    """``y = sigmoid(z)``, ``z = 2 (x - shift) / eps + c``, on the active entries (0 elsewhere).

    ``shift`` is a score near the root, so the entries that are not saturated have small ``z``
    and ``u = z - c`` (the cancellation of ``x - max`` against a large ``c`` is avoided).
    ``c`` (``offset``, an exact root passed in) is fixed by ``sum_i y_i = k`` on the active entries,
    so it is an implicit function of ``(x, eps)``. Differentiating the constraint, with
    ``w = y (1 - y)`` and ``dz0 = 2 dx / eps - (z - c) deps / eps``:
    ``dc = -sum(w dz0) / sum(w)`` (0 when every entry is saturated) and ``dy = w (dz0 + dc)``,
    O(n) per row; both terms are centred on their ``w``-weighted means before dividing by
    ``eps``. The rule calls this function again, so derivatives of every order are the implicit
    ones.
    """
    z = _scores(x, eps, shift) + offset[..., None]
    return jnp.where(active, jax.nn.sigmoid(jnp.where(active, z, 0)), 0)


@_sigmoid_mask.defjvp
def _sigmoid_mask_jvp(
    primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    x, eps, shift, offset, active = primals
    dx, deps = tangents[0], tangents[1]
    y = _sigmoid_mask(x, eps, shift, offset, active)
    w = y * (1 - y)  # 0 off the active entries, where y = 0
    moving = active & (w > 0)
    total = jnp.sum(w, axis=-1, keepdims=True)

    def centred(v: Array) -> Array:
        v = jnp.where(moving, v, 0)
        return jnp.where(moving, v - safe_divide(jnp.sum(w * v, axis=-1, keepdims=True), total), 0)

    u = _scores(x, eps, shift)
    inv = inverse(eps)[..., None]
    dz = 2 * centred(dx) * inv - finite(centred(u) * inv) * deps[..., None]
    return y, w * dz


class _NewtonRows(NamedTuple):
    u: Array  # (B, n) 2 (x - shift) / eps on real entries, 0 elsewhere
    valid: Array  # (B, n) real entries
    inner: Array  # (B,) 0 < k < L: the row has a root to find
    target: Array  # (B,) log(k / (L - k))
    few: Array  # (B,) 2 k <= L: sum the selected side (else the other one)
    total: Array  # (B,) L as a float


class _NewtonState(NamedTuple):
    offset: Array  # (B,) current iterate c
    lo: Array  # (B,) bracket: H(lo) <= 0
    hi: Array  # (B,) bracket: H(hi) >= 0
    center: Array  # (B,) offset at which `scaled_exp` was computed
    scaled_exp: Array  # (B, n) exp(min(u + center, cap)) on real entries, 0 elsewhere
    residual: Array  # (B,) H at the last evaluated iterate
    done: Array  # (B,) bool
    iterations: Array  # (B,) int32


def _newton_offsets(
    u: Array,
    u_min: Array,
    valid: Array,
    k: Array,
    lengths: Array,
    max_iter: int,
    tol: float,
    u_max: Array | None = None,
    start: Array | None = None,
) -> tuple[Array, SoftTopkInfo]:
    """Row offsets ``c`` with ``sum_i sigmoid(u_i + c) = k`` over the real entries.

    Newton on ``H(c) = log F(c) - log(L - F(c)) - log(k / (L - k))`` (slope in (0, 1]; linear in the
    saturated regimes), kept inside the bracket
    ``[log(k / L) - max u, -min u + log(k / (L - k))]`` (``max u`` is 0 unless given) and
    falling back to bisection. ``exp(u_i + center)`` is evaluated once per "center" and rescaled by
    ``exp(c - center)`` at each iterate, so a step costs no transcendental per entry unless the
    iterate has moved more than ``reach`` from the center (then the row's exponentials are
    recomputed). Exponents are capped at ``cap``; ``cap - reach`` and the underflow margin keep
    the neglected terms below the dtype's resolution. The few rows that need many iterations
    finish on a compacted batch (:func:`core._lockstep.iterate_rows`).
    """
    dtype = u.dtype
    big = jnp.finfo(dtype).bits > 32
    cap, reach = (400.0, 200.0) if big else (60.0, 20.0)
    inner = (k > 0) & (k < lengths)
    kf = jnp.where(inner, k, 1).astype(dtype)
    rest = jnp.where(inner, lengths - k, 1).astype(dtype)
    target = jnp.log(kf) - jnp.log(rest)
    u = jnp.where(valid, u, 0)
    tiny = jnp.finfo(dtype).tiny
    rows = _NewtonRows(u, valid, inner, target, 2 * k <= lengths, lengths.astype(dtype))

    def evaluate(
        offset: Array, center: Array, scaled_exp: Array, rows: _NewtonRows
    ) -> tuple[Array, Array]:
        t = scaled_exp * jnp.exp(offset - center)[:, None]
        r = jnp.where(rows.valid, 1 / (1 + t), 0)
        p = t * r
        # Sum the side holding at most half the mass; the other side is L minus it (no
        # cancellation: it is at least L / 2). Two reductions per step instead of three.
        side = jnp.sum(jnp.where(rows.few[:, None], p, r), axis=-1)
        above = jnp.where(rows.few, side, rows.total - side)
        below = jnp.where(rows.few, rows.total - side, side)
        slope = jnp.sum(p * r, axis=-1)
        safe_above = jnp.where(rows.inner, jnp.maximum(above, tiny), 1)
        safe_below = jnp.where(rows.inner, jnp.maximum(below, tiny), 1)
        residual = jnp.log(safe_above) - jnp.log(safe_below) - rows.target
        dres = slope * (1 / safe_above + 1 / safe_below)
        return jnp.where(rows.inner, residual, 0), dres

    def unfinished(state: _NewtonState) -> Array:
        return ~state.done & (state.iterations < max_iter)

    def step(state: _NewtonState, rows: _NewtonRows) -> _NewtonState:
        offset, center, scaled_exp = state.offset, state.center, state.scaled_exp
        active = unfinished(state)
        far = active & (jnp.abs(offset - center) > reach)

        def rebase(_: None) -> tuple[Array, Array]:
            fresh = jnp.exp(jnp.minimum(rows.u + offset[:, None], cap))
            fresh = jnp.where(rows.valid, fresh, 0)
            return jnp.where(far, offset, center), jnp.where(far[:, None], fresh, scaled_exp)

        center, scaled_exp = jax.lax.cond(
            jnp.any(far), rebase, lambda _: (center, scaled_exp), None
        )
        residual, dres = evaluate(offset, center, scaled_exp, rows)
        lo = jnp.where(residual <= 0, offset, state.lo)
        hi = jnp.where(residual >= 0, offset, state.hi)
        newton = offset - safe_divide(residual, dres)
        # Where every entry is saturated the slope is negligible and Newton only creeps (steps of
        # about 1 / H' across a plateau): bisect there instead.
        inside = (dres > 1e-6) & (newton > lo) & (newton < hi)
        proposal = jnp.where(inside, newton, 0.5 * (lo + hi))
        stuck = hi - lo <= 4 * jnp.finfo(dtype).eps * (1 + jnp.abs(offset))
        solved = (jnp.abs(residual) <= tol) | stuck
        # A short Newton step needs no verification: 0 < H' <= 2 and |H''| <= H' + H'^2 <= 6, so
        # Taylor's remainder bounds the residual after the step by 3 * step^2 (one evaluation
        # saved per row).
        bound = 3 * (newton - offset) ** 2
        polished = inside & (bound <= tol) & ~solved
        finished = state.done | solved | polished
        keep = ~active
        return _NewtonState(
            offset=jnp.where(keep | (finished & ~polished), offset, proposal),
            lo=jnp.where(keep, state.lo, lo),
            hi=jnp.where(keep, state.hi, hi),
            center=center,
            scaled_exp=scaled_exp,
            residual=jnp.where(keep, state.residual, jnp.where(polished, bound, residual)),
            done=jnp.where(keep, state.done, finished),
            iterations=state.iterations + active.astype(jnp.int32),
        )

    # H(lo) <= 0 at lo = log(k / L) - max u: there F <= L sigmoid(max u + lo) <= L e^(max u + lo) = k.
    lo = jnp.log(kf) - jnp.log(lengths.astype(dtype))
    if u_max is not None:
        lo = lo - u_max
    hi = jnp.maximum(-u_min + target, lo)
    if start is None:
        # Start where a normal fit puts the (k + 1/2)-th largest score: in the small-eps regime
        # the root sits between the k-th and (k+1)-th scores, and from the all-tail end of the
        # bracket Newton only creeps towards it (about one unit of u per step across a wide gap).
        start = -normal_upper_quantile(u, valid, jnp.where(inner, k, 0).astype(dtype) + 0.5)
    start = jnp.clip(start, lo, hi)
    scaled_exp = jnp.where(valid, jnp.exp(jnp.minimum(u + start[:, None], cap)), 0)
    state = _NewtonState(
        offset=start,
        lo=lo,
        hi=hi,
        center=start,
        scaled_exp=scaled_exp,
        residual=jnp.full(lo.shape, jnp.inf, dtype),
        done=~inner,
        iterations=jnp.zeros(lo.shape, jnp.int32),
    )
    state = iterate_rows(step, state, rows, unfinished=unfinished)
    residual = jnp.where(inner, state.residual, 0)
    # |F - k| from H: F = L sigmoid(H + target) is the plan's column sum (times L).
    count = lengths.astype(dtype) * jax.nn.sigmoid(residual + target)
    error = jnp.where(inner, 2 * jnp.abs(count - kf) / jnp.maximum(lengths, 1).astype(dtype), 0)
    converged = ~inner | (jnp.abs(residual) <= tol) | (error <= 8 * jnp.finfo(dtype).eps)
    info = SoftTopkInfo(state.iterations, converged, error)
    return jnp.where(inner, state.offset, 0), info


# ---------------------------------------------------------------------------------------------
# Log-domain Sinkhorn on the reduced kernel exp(beta_j + 2 (x_i - shift) a_j / eps).


class _SinkhornState(NamedTuple):
    beta: Array  # (B, m) column potentials (scaled by 1/eps, the anchors' a_j^2 absorbed)
    row_lse: Array  # (B, n) LSE_j(beta_j + scores_ij)
    error: Array  # (B,)
    done: Array  # (B,)
    iterations: Array  # (B,)
    step: Array  # ()


def _sinkhorn(
    scores: Array, valid: Array, masses: Array, lengths: Array, max_iter: int, tol: float
) -> tuple[Array, SoftTopkInfo]:
    """Column potentials ``beta`` of the plan ``P_ij = softmax_j(beta_j + scores_ij)``.

    ``P``'s rows sum to one and its column sums should be ``masses`` (``(B, m)``, summing to the row
    length; empty columns get ``beta = -inf``). ``scores_ij = 2 (x_i - shift) a_j / eps``. Log-domain
    alternating projections; the error is the L1 row-marginal error of the column-feasible iterate,
    in units of a plan of total mass 1.
    """
    dtype = scores.dtype
    n_real = jnp.maximum(lengths, 1).astype(dtype)
    # Rows without real entries get a dummy mass so that every quantity stays finite.
    dummy = jnp.zeros_like(masses).at[:, -1].set(1)
    masses = jnp.where((lengths == 0)[:, None], dummy, masses)
    has_mass = masses > 0
    log_mass = jnp.log(jnp.where(has_mass, masses, 1))
    real = valid[:, :, None]

    def columns(alpha: Array) -> Array:
        lse = jax.nn.logsumexp(jnp.where(real, alpha[:, :, None] + scores, -jnp.inf), axis=1)
        lse = jnp.where(jnp.isfinite(lse), lse, 0)
        return jnp.where(has_mass, log_mass - lse, -jnp.inf)

    def rows(beta: Array) -> Array:
        return jax.nn.logsumexp(beta[:, None, :] + scores, axis=-1)

    def cond(state: _SinkhornState) -> Array:
        return jnp.any(~state.done) & (state.step < max_iter)

    def body(state: _SinkhornState) -> _SinkhornState:
        alpha = -state.row_lse  # rows of the plan sum to one
        beta = columns(alpha)  # columns sum to the masses
        row_lse = rows(beta)
        row_sums = jnp.exp(alpha + row_lse)
        err = jnp.sum(jnp.where(valid, jnp.abs(row_sums - 1), 0), axis=-1) / n_real
        keep = state.done
        return _SinkhornState(
            beta=jnp.where(keep[:, None], state.beta, beta),
            row_lse=jnp.where(keep[:, None], state.row_lse, row_lse),
            error=jnp.where(keep, state.error, err),
            done=keep | (err <= tol),
            iterations=state.iterations + (~keep).astype(jnp.int32),
            step=state.step + 1,
        )

    beta0 = jnp.where(has_mass, log_mass, -jnp.inf) - jnp.log(n_real)[:, None]
    b = scores.shape[0]
    state = _SinkhornState(
        beta=beta0,
        row_lse=rows(beta0),
        error=jnp.full((b,), jnp.inf, dtype),
        done=lengths == 0,
        iterations=jnp.zeros((b,), jnp.int32),
        step=jnp.zeros((), jnp.int32),
    )
    state = jax.lax.while_loop(cond, body, state)
    error = jnp.where(lengths == 0, 0, state.error)
    beta = jnp.where(has_mass, state.beta, jnp.finfo(dtype).min / 4)
    return beta, SoftTopkInfo(state.iterations, state.done, error)


# ---------------------------------------------------------------------------------------------
# Public: the mask.


def _threshold_guess(x: Array, valid: Array, k: Array) -> Array:
    """Where a normal fit to the row puts the (k + 1/2)-th largest score."""
    return normal_upper_quantile(x, valid, k.astype(x.dtype) + 0.5)


def _kth_largest(x: Array, valid: Array, k: Array) -> Array:
    """The k-th largest real entry of each row, exactly (:mod:`core._hard`'s selection)."""
    k = jnp.maximum(k, 1)
    key = _kth_largest_key(_ordered_keys(x), valid, k, _threshold_guess(x, valid, k))
    return _key_to_float(key, x.dtype)


def _tail_balance(u: Array, valid: Array, top: Array) -> Array:
    """The offset that balances the two tails deep in saturation: a start for :func:`_polish`.

    With ``T`` (``top``) k entries and ``R`` the rest, ``sum_i sigmoid(u_i + c) = k`` reads
    ``sum_T sigmoid(-u - c) = sum_R sigmoid(u + c)``; where every ``|u_i + c|`` is large both sides
    are exponentials and ``c = (LSE_T(-u) - LSE_R(u)) / 2``.
    """
    lse_top = jax.nn.logsumexp(jnp.where(top, -u, -jnp.inf), axis=-1)
    lse_rest = jax.nn.logsumexp(jnp.where(valid & ~top, u, -jnp.inf), axis=-1)
    balance = 0.5 * (lse_top - lse_rest)
    return jnp.where(jnp.isfinite(balance), balance, 0)


def _polish(u: Array, valid: Array, top: Array, offset: Array, steps: int = 3) -> Array:
    """Newton steps on ``G(c) = log sum_R sigmoid(u + c) - log sum_T sigmoid(-u - c)``.

    ``G = 0`` is ``sum sigmoid(u + c) = k`` for any k-subset ``T``; unlike ``F(c) - k`` it keeps the
    exponentially small tails of a saturated row (F = k to rounding on a whole plateau, where
    Newton on F stops anywhere). ``G' = sum_R p sigmoid(-z) + sum_T q sigmoid(z)`` lies in (0, 2]
    with ``p``, ``q`` the softmax weights of the two log-sums: quadratic convergence.
    """
    rest = valid & ~top

    def step(_: int, c: Array) -> Array:
        z = u + c[:, None]
        log_rest = jnp.where(rest, jax.nn.log_sigmoid(z), -jnp.inf)
        log_top = jnp.where(top, jax.nn.log_sigmoid(-z), -jnp.inf)
        lse_rest = jax.nn.logsumexp(log_rest, axis=-1, keepdims=True)
        lse_top = jax.nn.logsumexp(log_top, axis=-1, keepdims=True)
        slope = jnp.sum(
            jnp.where(rest, jnp.exp(log_rest - lse_rest) * jax.nn.sigmoid(-z), 0), axis=-1
        ) + jnp.sum(jnp.where(top, jnp.exp(log_top - lse_top) * jax.nn.sigmoid(z), 0), axis=-1)
        g = (lse_rest - lse_top)[:, 0]
        moved = c - safe_divide(g, slope)
        return jnp.where(jnp.isfinite(moved), moved, c)

    return jax.lax.fori_loop(0, steps, step, offset)


def _largest_k(u: Array, valid: Array, k: Array) -> Array:
    """The k largest entries when ``u`` is measured from the k-th largest (ties: lower index)."""
    above = valid & (u > 0)
    ties = valid & (u == 0)
    needed = (k - jnp.sum(above, axis=-1))[:, None]
    return above | (ties & (jnp.cumsum(ties, axis=-1) <= needed))


def _soft_mask_impl(
    x: ArrayLike,
    k: ArrayLike,
    epsilon: ArrayLike,
    lengths: ArrayLike | None,
    rescale_cost: bool,
    solver: str,
    max_iter: int | None,
    tol: float | None,
) -> tuple[Array, SoftTopkInfo]:
    x, eps, lengths_, valid, _, _ = _prepare(x, epsilon, lengths)
    k_ = row_k(x, k, lengths_)
    if rescale_cost:
        eps = _rescaled(eps, x, valid, 1.0)
    batch, n = x.shape[:-1], x.shape[-1]
    flat = (-1, n)
    sx = jax.lax.stop_gradient(x).reshape(flat)
    seps = jax.lax.stop_gradient(eps).reshape(-1)
    svalid, sk, slen = valid.reshape(flat), k_.reshape(-1), lengths_.reshape(-1)
    # Scores are measured from a point near the root (a normal fit's guess, then the root found):
    # the entries that are not saturated then have small scores, exact to the dtype, whatever
    # the row's range (u = 2 (x - max) / eps would hold them only to ulp((max - x_(k)) / eps)).
    reference = _threshold_guess(sx, svalid, sk)
    u = _scores(sx, seps, reference)
    finfo = jnp.finfo(x.dtype)
    inner = (sk > 0) & (sk < slen)
    if solver == "newton":

        def solve(u: Array, start: Array, iterations: int) -> tuple[Array, SoftTopkInfo]:
            u_min = jnp.min(jnp.where(svalid, u, jnp.inf), axis=-1)
            u_max = jnp.max(jnp.where(svalid, u, -jnp.inf), axis=-1)
            return _newton_offsets(
                u,
                u_min,
                svalid,
                sk,
                slen,
                max_iter=iterations if max_iter is None else max_iter,
                tol=32 * float(finfo.eps) if tol is None else tol,
                u_max=u_max,
                start=start,
            )

        offset, info = solve(u, jnp.zeros_like(seps), 30)
        # A root far from the reference (|c| > 16) is only as exact as ulp(c): measure those rows
        # again from the root found. A row whose first solve did not converge (the root among
        # saturated scores: a wide gap, or a row unlike a normal fit) starts again from its k-th
        # largest entry, selected exactly, at the balance of the two tails.
        # Where no entry is within 8 of the root the row is saturated: Newton stopped somewhere on
        # a plateau, and the tail balance below places the root.
        closest = jnp.min(jnp.where(svalid, jnp.abs(u + offset[:, None]), jnp.inf), axis=-1)
        again = inner & ((jnp.abs(offset) > 16) | ~info.converged | (closest > 8))

        def recentre(_: None) -> tuple[Array, Array, SoftTopkInfo]:
            lost = again & ~info.converged
            # The root in the units of x (its rounding is absorbed by the new offset).
            moved = reference - offset * (0.5 * seps)
            moved = jnp.where(jnp.isfinite(moved), moved, reference)
            start = jnp.zeros_like(offset)

            def select(_: None) -> tuple[Array, Array]:
                kth = _kth_largest(sx, svalid, sk)
                closer = _scores(sx, seps, kth)
                balance = _tail_balance(closer, svalid, _largest_k(closer, svalid, sk))
                return jnp.where(lost, kth, moved), jnp.where(lost, balance, start)

            moved, start = jax.lax.cond(jnp.any(lost), select, lambda _: (moved, start), None)
            closer = _scores(sx, seps, moved)
            new_offset, new_info = solve(closer, start, 100)
            # Where the k largest are apart from the rest (a saturated row), Newton on F stopped
            # somewhere on a plateau: place the root by the balance of the two tails.
            top = svalid & (closer + new_offset[:, None] > 0)
            split = jnp.sum(top, axis=-1) == sk
            new_offset = jnp.where(split, _polish(closer, svalid, top, new_offset), new_offset)
            keep = ~again
            merged = SoftTopkInfo(
                info.iterations + jnp.where(keep, 0, new_info.iterations),
                jnp.where(keep, info.converged, new_info.converged | split),
                jnp.where(keep, info.error, jnp.where(split, 0, new_info.error)),
            )
            return jnp.where(keep, reference, moved), jnp.where(keep, offset, new_offset), merged

        reference, offset, info = jax.lax.cond(
            jnp.any(again), recentre, lambda _: (reference, offset, info), None
        )
    elif solver == "sinkhorn":
        anchors = jnp.array([0.0, 1.0], x.dtype)
        masses = jnp.stack([slen - sk, sk], axis=-1).astype(x.dtype)
        beta, info = _sinkhorn(
            u[:, :, None] * anchors,
            svalid,
            masses,
            slen,
            max_iter=10_000 if max_iter is None else max_iter,
            tol=(1e-6 if finfo.bits <= 32 else 1e-12) if tol is None else tol,
        )
        offset = jnp.where(inner, beta[:, 1] - jnp.where(inner, beta[:, 0], 0), 0)
    else:
        raise ValueError(f"solver must be 'newton' or 'sinkhorn', got {solver!r}")
    offset = jax.lax.stop_gradient(offset.reshape(batch))
    reference = jax.lax.stop_gradient(reference.reshape(batch))
    inner = (k_ > 0) & (k_ < lengths_)
    active = valid & inner[..., None]
    mask = _sigmoid_mask(x, eps, reference, offset, active)
    mask = jnp.where(valid & (k_ >= lengths_)[..., None], 1, mask).astype(x.dtype)
    info = SoftTopkInfo(*(field.reshape(batch) for field in info))
    return mask, info


@overload
def soft_topk_mask(
    x: ArrayLike,
    k: ArrayLike,
    *,
    epsilon: ArrayLike = ...,
    lengths: ArrayLike | None = ...,
    rescale_cost: bool = ...,
    solver: Literal["newton", "sinkhorn"] = ...,
    max_iter: int | None = ...,
    tol: float | None = ...,
    return_info: Literal[False] = ...,
) -> Array: ...


@overload
def soft_topk_mask(
    x: ArrayLike,
    k: ArrayLike,
    *,
    epsilon: ArrayLike = ...,
    lengths: ArrayLike | None = ...,
    rescale_cost: bool = ...,
    solver: Literal["newton", "sinkhorn"] = ...,
    max_iter: int | None = ...,
    tol: float | None = ...,
    return_info: Literal[True],
) -> tuple[Array, SoftTopkInfo]: ...


def soft_topk_mask(
    x: ArrayLike,
    k: ArrayLike,
    *,
    epsilon: ArrayLike = 0.1,
    lengths: ArrayLike | None = None,
    rescale_cost: bool = False,
    solver: Literal["newton", "sinkhorn"] = "newton",
    max_iter: int | None = None,
    tol: float | None = None,
    return_info: bool = False,
) -> Array | tuple[Array, SoftTopkInfo]:
    r"""SOFT top-k mask: the entropic optimal transport of the entries onto the anchors {0, 1}.

    For each row with ``n`` real entries, with ``mu = 1_n / n``, ``nu = ((n - k)/n, k/n)`` and
    ``C_ij = (x_i - a_j)^2``, ``a = (0, 1)``:

    .. math::

        \Gamma^\star = \underset{\Gamma 1 = \mu,\ \Gamma^\top 1 = \nu}{\text{argmin}}
            \langle C, \Gamma\rangle + \epsilon \sum_{ij}\Gamma_{ij}\log\Gamma_{ij},
        \qquad \text{mask} = n\,\Gamma^\star_{:,1} = \text{sigmoid}\big((2x + b)/\epsilon\big),

    with the scalar ``b`` fixed by ``sum(mask) = k``. The mask lies in ``[0, 1]^n``, sums to ``k``, is
    invariant to shifting ``x`` and tends to the hard top-k indicator (largest ``k``) as
    ``epsilon -> 0`` (when the k-th and (k+1)-th values differ). This is the official SOFT operator
    applied to ``-x`` and ott-jax's ``soft_sort.topk_mask`` with an identity squashing function.

    The result depends on ``x`` only through ``2 (x_i - x_j) / epsilon``, and it is exact to a few
    ulps for every finite ``x`` and every ``epsilon > 0`` of the dtype: scores are measured from
    a point near the root, never from the row's maximum, so a huge ``(max - x_(k)) / epsilon``
    costs no precision, and on a saturated row (a wide gap around the k-th score) the root is
    placed by the log-domain balance of the two tails (``info`` reports rows whose residual could
    not reach ``tol``). ``-inf`` scores (masked logits) become ``min - max(max - min, 1)``
    of the row's finite scores, as in the official code; ``+inf`` and NaN are not supported.

    Derivatives (forward and reverse) come from the implicit function theorem, in O(n) per row:
    ``dmask = w * (2 dx / eps + db / eps - z deps / eps)`` with ``w = mask (1 - mask)``, ``z`` the
    sigmoid's argument and ``db`` fixed by ``sum(dmask) = 0``.

    Args:
        x: scores, shape ``(..., n)``, float32 or float64.
        k: number of entries to select: an int or an int array of shape ``(...)`` (data, not static),
            clipped to ``[0, length]``.
        epsilon: entropic regularisation (> 0), a float or an array ``(...)``; in the cost's units
            (``(x_i - a_j)^2``), or in units of the row's maximal cost if ``rescale_cost``.
        lengths: optional int array ``(...)``: only the first ``lengths[i]`` entries of a row are
            real; the tail gets exactly 0 (and derivative 0).
        rescale_cost: static; divide the cost by its maximum over the row's real entries and the two
            anchors (as the official code does, but per row, never across the batch). The maximum
            is differentiated too.
        solver: static; ``"newton"`` (exact root of the 1-D dual, default) or ``"sinkhorn"``
            (log-domain Sinkhorn, for cross-checks).
        max_iter: static cap on iterations (default 100 for Newton, 10000 for Sinkhorn).
        tol: static tolerance: on ``|log F - log(n - F) - log(k/(n - k))|`` for Newton
            (default ``32 * finfo.eps``) and on the L1 marginal error for Sinkhorn (default 1e-6
            in float32, 1e-12 in float64).
        return_info: static; also return a :class:`SoftTopkInfo`.

    Returns:
        The ``(..., n)`` soft mask in ``x``'s dtype, and the diagnostics if ``return_info``.

    References:
        Y. Xie et al., "Differentiable Top-k with Optimal Transport", NeurIPS 2020,
        arXiv:2002.06504.

    Example:
        >>> mask = soft_topk_mask(jnp.array([1.0, 3.0, 2.0, 0.0]), 2, epsilon=1.0)
        >>> [round(float(m), 3) for m in mask]  # sigmoid(2x - 3): sums to 2
        [0.269, 0.953, 0.731, 0.047]
        >>> # The official demo (k=3 smallest of [5,2,3,4,1,6], eps=0.05, cost / max) on 1 - x:
        >>> demo = jnp.array([-4.0, -1.0, -2.0, -3.0, 0.0, -5.0])
        >>> [round(float(m), 3) for m in soft_topk_mask(demo, 3, epsilon=0.05, rescale_cost=True)]
        [0.159, 0.841, 0.635, 0.365, 0.941, 0.059]
    """
    mask, info = _soft_mask_impl(x, k, epsilon, lengths, rescale_cost, solver, max_iter, tol)
    return (mask, info) if return_info else mask


# ---------------------------------------------------------------------------------------------
# Public: the sorted variant.


def _sorted_scores(x: Array, eps: Array, shift: Array, m: int) -> Array:
    """``s_ij = u_i a_j`` with ``u = 2 (x - shift) / eps`` (:func:`_scores`), held finite."""
    anchors = jnp.arange(m - 1, -1, -1, dtype=x.dtype)
    bound = jnp.finfo(x.dtype).max / (8 * m)
    return jnp.clip(_scores(x, eps, shift), -bound, bound)[..., None] * anchors


@jax.custom_jvp
def _sorted_potentials(x: Array, eps: Array, shift: Array, beta: Array, valid: Array) -> Array:
    """Column potentials ``beta`` (passed in, converged) as an implicit function of ``(x, eps)``.

    The plan is ``P_ij = softmax_j(beta_j + s_ij)``, ``s_ij = 2 (x_i - shift) a_j / eps`` with anchors
    ``a = (m-1, ..., 0)``, and ``beta`` keeps the column sums ``c = P^T 1`` fixed. With
    ``e_ij = ds_ij = 2 a_j dx_i / eps - s_ij deps / eps``, ``ebar_i = sum_l P_il e_il`` and
    ``r_j = sum_i P_ij (e_ij - ebar_i)``, the tangent ``d = dbeta`` solves
    ``(diag(c) - P^T P) d = -r``. That matrix is singular along the constants (and on empty
    columns); adding ``u u^T`` (``u`` the non-empty columns) and ``diag(1 - u)`` fixes the gauge
    without changing ``dP``. Cost O(n m^2 + m^3) per row. The rule calls this function again, so
    derivatives of every order are the implicit ones.
    """
    del x, eps, shift, valid
    return beta


@_sorted_potentials.defjvp
def _sorted_potentials_jvp(
    primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    x, eps, shift, beta, valid = primals
    dx, deps = tangents[0], tangents[1]
    m = beta.shape[-1]
    beta = _sorted_potentials(x, eps, shift, beta, valid)
    scores = _sorted_scores(x, eps, shift, m)
    plan = jnp.where(valid[..., None], jax.nn.softmax(beta[..., None, :] + scores, axis=-1), 0)
    anchors = jnp.arange(m - 1, -1, -1, dtype=x.dtype)
    # e_ij - ebar_i = (a_j - abar_i) (2 dx_i - u_i deps) / eps: centred first, so that a saturated
    # entry (one-hot row, huge u_i) contributes exactly 0.
    spread = jnp.where(plan > 0, anchors - jnp.sum(plan * anchors, axis=-1, keepdims=True), 0)
    u = jnp.clip(_scores(x, eps, shift), -jnp.finfo(x.dtype).max / (8 * m), None)
    inv = inverse(eps)[..., None, None]
    centred = (
        spread * (2 * dx[..., None]) * inv
        - finite(spread * u[..., None] * inv) * deps[..., None, None]
    )
    r = jnp.sum(plan * jnp.where(valid[..., None], centred, 0), axis=-2)
    col = jnp.sum(plan, axis=-2)
    used = (jax.lax.stop_gradient(col) > 0).astype(x.dtype)
    gram = jnp.einsum("...ij,...il->...jl", plan, plan)
    system = (
        jnp.eye(m, dtype=x.dtype) * (col + 1 - used)[..., None, :]
        - gram
        + used[..., :, None] * used[..., None, :]
    )
    return beta, jnp.linalg.solve(system, -r[..., None])[..., 0]


def _sorted_plan(x: Array, eps: Array, shift: Array, beta: Array, valid: Array) -> Array:
    """``P_ij = softmax_j(beta_j + 2 (x_i - shift) a_j / eps)`` on the real rows."""
    beta = _sorted_potentials(x, eps, shift, beta, valid)
    scores = _sorted_scores(x, eps, shift, beta.shape[-1])
    plan = jax.nn.softmax(beta[..., None, :] + scores, axis=-1)
    return jnp.where(valid[..., None], plan, 0)


def soft_topk_sorted(
    x: ArrayLike,
    k: int,
    *,
    epsilon: ArrayLike = 0.1,
    lengths: ArrayLike | None = None,
    rescale_cost: bool = False,
    max_iter: int = 2000,
    tol: float | None = None,
) -> SoftTopkSorted:
    r"""Sorted SOFT top-k: soft one-hots of the 1st, ..., k-th largest entries and their values.

    Each row (``n`` real entries) is transported onto the ``k + 1`` anchors ``a = (k, k-1, ..., 1, 0)``
    with ``nu = (1/n, ..., 1/n, (n-k)/n)``, ``mu = 1_n/n`` and ``C_ij = (x_i - a_j)^2``:

    .. math::

        \Gamma^\star = \underset{\Gamma 1 = \mu,\ \Gamma^\top 1 = \nu}{\text{argmin}}
            \langle C, \Gamma\rangle + \epsilon \sum_{ij}\Gamma_{ij}\log\Gamma_{ij},
        \qquad A = n\,\Gamma^{\star\top}_{:, :k}, \quad \text{values} = A x .

    Row ``j`` of ``A`` tends to the one-hot of the (j+1)-th largest entry as ``epsilon -> 0``. Solved by
    a log-domain Sinkhorn (stopping on the L1 marginal error ``tol``, at most ``max_iter``
    iterations; see ``info``). Derivatives (forward and reverse) by the implicit function theorem
    on the converged plan: O(n k^2 + k^3) per row. The plan depends on ``x`` through
    ``2 (x_i - max x) a_j / epsilon``, measured from the row's maximum: Sinkhorn converges while
    the top of the row spans a moderate multiple of ``epsilon`` (the anchors are one unit apart,
    so ``x`` or ``epsilon`` should be on that scale, or use ``rescale_cost``); far beyond (a hard
    regime, ``(max - x_(k+1)) k / epsilon`` near ``1 / finfo.eps``) ``info.converged`` is False and
    the values are not to be used. Outputs stay finite for every finite ``x`` and ``epsilon > 0``.

    ``k`` must be a static Python int because the output shape depends on it (under ``jit``, mark it
    static). Rows with fewer than ``k`` real entries get zero rows in ``A`` beyond their length.

    Args:
        x: scores, shape ``(..., n)``, float32 or float64.
        k: static number of sorted outputs, ``0 <= k <= n``.
        epsilon: entropic regularisation (> 0), a float or an array ``(...)`` (data).
        lengths: optional int array ``(...)`` of real entries per row; the tail gets 0.
        rescale_cost: static; divide the cost by its maximum over the row (real entries, all anchors).
        max_iter: static Sinkhorn iteration cap.
        tol: static L1 marginal tolerance (default 1e-6 in float32, 1e-12 in float64).

    Returns:
        :class:`SoftTopkSorted` with ``values`` ``(..., k)``, ``assignment`` ``(..., k, n)`` and the
        Sinkhorn diagnostics ``info``.

    References:
        Y. Xie et al., "Differentiable Top-k with Optimal Transport", NeurIPS 2020,
        arXiv:2002.06504 (the k+1-anchor variant used for beam search).

    Example:
        >>> out = soft_topk_sorted(jnp.array([0.0, 3.0, 1.0, 2.0]), 2, epsilon=0.5)
        >>> [round(float(v), 2) for v in out.values], bool(out.info.converged)
        ([2.89, 2.0], True)
    """
    k = int(k)
    x, eps, lengths_, valid, shift, _ = _prepare(x, epsilon, lengths)
    n = x.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    batch = x.shape[:-1]
    if k == 0:
        zeros = jnp.zeros(batch, jnp.int32)
        info = SoftTopkInfo(zeros, zeros == 0, jnp.zeros(batch, x.dtype))
        return SoftTopkSorted(jnp.zeros((*batch, 0), x.dtype), jnp.zeros((*batch, 0, n)), info)
    if rescale_cost:
        eps = _rescaled(eps, x, valid, float(k))
    m = k + 1
    sx = jax.lax.stop_gradient(x).reshape(-1, n)
    seps = jax.lax.stop_gradient(eps).reshape(-1)
    svalid, slen = valid.reshape(-1, n), lengths_.reshape(-1)
    kept = jnp.minimum(slen, k)
    ones = (jnp.arange(k)[None, :] < kept[:, None]).astype(x.dtype)
    masses = jnp.concatenate([ones, (slen - kept).astype(x.dtype)[:, None]], axis=-1)
    scores = _sorted_scores(sx, seps, shift.reshape(-1), m)
    finfo = jnp.finfo(x.dtype)
    beta, info = _sinkhorn(
        scores,
        svalid,
        masses,
        slen,
        max_iter=max_iter,
        tol=(1e-6 if finfo.bits <= 32 else 1e-12) if tol is None else tol,
    )
    beta = jax.lax.stop_gradient(beta.reshape(*batch, m))
    plan = _sorted_plan(x, eps, shift, beta, valid)
    assignment = jnp.swapaxes(plan[..., :k], -1, -2)
    values = jnp.einsum("...jn,...n->...j", assignment, jnp.where(valid, x, 0))
    info = SoftTopkInfo(*(field.reshape(batch) for field in info))
    return SoftTopkSorted(values, assignment, info)
