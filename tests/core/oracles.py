"""Float64 NumPy/SciPy references that share no code with ``core``.

Three independent routes to the sparse top-k operators:
- ``pav_*``: sort, then a plain Python stack PAV whose block roots are found by bisection on the
  block's optimality condition (the isotonic reduction of Sander et al. 2023, any p);
- ``scipy_*``: for p = 2, SciPy's ``isotonic_regression`` on the sorted problem;
- ``bisection_mask``: bisection of the threshold on the hypersimplex (the primal's KKT conditions).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
from scipy.optimize import isotonic_regression as scipy_isotonic


def _block_root(s: np.ndarray, w: np.ndarray, eps: float, r: float, magnitude: bool) -> float:
    """Root v of  sum_B sign(s - v)|s - v|^r = eps^r * W * (v if magnitude else 1)  (decreasing in v)."""
    weight = eps**r * w.sum()

    def excess(v: float) -> float:
        gap = s - v
        return float(np.sum(np.sign(gap) * np.abs(gap) ** r) - weight * (v if magnitude else 1.0))

    lo, hi = s.min() - 1.0 - eps, s.max() + 1.0
    while excess(lo) < 0:
        lo -= 2 * (hi - lo)
    while excess(hi) > 0:
        hi += 2 * (hi - lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def pav_decreasing(
    s: np.ndarray, w: np.ndarray, eps: float, r: float, magnitude: bool
) -> np.ndarray:
    """argmin_{v dec} sum (1/q)|s - v|^q + eps^(q-1) w (v or v^2/2), q = r + 1, by stack PAV."""
    blocks: list[tuple[int, int, float]] = []
    for i in range(len(s)):
        start, end = i, i + 1
        value = _block_root(s[start:end], w[start:end], eps, r, magnitude)
        while blocks and blocks[-1][2] <= value:
            start = blocks.pop()[0]
            value = _block_root(s[start:end], w[start:end], eps, r, magnitude)
        blocks.append((start, end, value))
    v = np.empty(len(s))
    for start, end, value in blocks:
        v[start:end] = value
    return v


def _sorted(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-x, kind="stable")
    w = np.zeros(len(x))
    w[:k] = 1.0
    return order, x[order], w


def pav_mask(x: np.ndarray, k: int, eps: float, p: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    r = 1.0 / (p - 1.0)
    order, s, w = _sorted(x, k)
    v = pav_decreasing(s, w, eps, r, magnitude=False)
    y = np.empty(len(x))
    y[order] = np.clip(np.maximum(s - v, 0) / eps, 0, 1) ** r
    return y


def pav_magnitude(x: np.ndarray, k: int, eps: float, p: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    r = 1.0 / (p - 1.0)
    order, s, w = _sorted(np.abs(x), k)
    v = pav_decreasing(s, w, eps, r, magnitude=True)
    u = (np.maximum(s - v, 0) / eps) ** r
    y = np.empty(len(x))
    y[order] = u + np.maximum(s - v, 0)
    return np.sign(x) * y


def scipy_mask_p2(x: np.ndarray, k: int, eps: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    order, s, w = _sorted(x, k)
    v = scipy_isotonic(s - eps * w, increasing=False).x
    y = np.empty(len(x))
    y[order] = (s - v) / eps
    return y


def scipy_magnitude_p2(x: np.ndarray, k: int, eps: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    order, s, w = _sorted(np.abs(x), k)
    weights = 1 + eps * w
    v = scipy_isotonic(s / weights, weights=weights, increasing=False).x
    y = np.empty(len(x))
    y[order] = (1 + eps) * (s - v) / eps
    return np.sign(x) * y


def bisection_mask(x: np.ndarray, k: int, eps: float, p: float) -> np.ndarray:
    """Solve sum_i clip(((x_i - t)/eps)_+^r, 0, 1) = k for t by 300 bisection steps."""
    x = np.asarray(x, np.float64)
    r = 1.0 / (p - 1.0)

    def mask(t: float) -> np.ndarray:
        return np.clip(np.maximum(x - t, 0) / eps, 0, 1) ** r

    lo, hi = x.min() - eps, x.max()
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        if mask(mid).sum() > k:
            lo = mid
        else:
            hi = mid
    return mask(0.5 * (lo + hi))


def hard_mask(x: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-np.asarray(x), kind="stable")
    y = np.zeros(len(x))
    y[order[:k]] = 1.0
    return y


def central_difference(f, x: np.ndarray, direction: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Directional derivative of f at x along direction, by central differences."""
    return (np.asarray(f(x + h * direction)) - np.asarray(f(x - h * direction))) / (2 * h)


# ------------------------------------------------------ soft sort / rank in 120-digit decimals
#
# fast-soft-sort's definitions evaluated literally (``s - w``, then ``s - v``) in decimal arithmetic
# with 120 significant digits: enough to keep every float32 score and epsilon exact through the
# cancellations that the float implementation must avoid (|x| / eps up to 1e84).

DIGITS = 120


def _lse(values: list[Decimal]) -> Decimal:
    top = max(values)
    return top + sum((v - top).exp() for v in values).ln()


def _pav(n: int, block_value) -> list[Decimal]:  # type: ignore[no-untyped-def]
    """Decreasing PAV: ``block_value(start, end)`` is the optimal value of entries [start, end)."""
    blocks: list[tuple[int, int, Decimal]] = []
    for i in range(n):
        start, value = i, block_value(i, i + 1)
        while blocks and blocks[-1][2] <= value:
            start = blocks.pop()[0]
            value = block_value(start, i + 1)
        blocks.append((start, i + 1, value))
    out: list[Decimal] = [Decimal(0)] * n
    for start, end, value in blocks:
        out[start:end] = [value] * (end - start)
    return out


def _isotonic(y: list[Decimal], w: list[Decimal], regularization: str) -> list[Decimal]:
    """fast-soft-sort's ``Isotonic(y, w)``: l2 iso(y - w), kl blocks LSE(y_B) - LSE(w_B)."""
    if regularization == "l2":
        d = [a - b for a, b in zip(y, w, strict=True)]
        return _pav(len(y), lambda i, j: sum(d[i:j]) / (j - i))
    return _pav(len(y), lambda i, j: _lse(y[i:j]) - _lse(w[i:j]))


def soft_rank_oracle(
    x: np.ndarray, eps: float, descending: bool, regularization: str
) -> np.ndarray:
    """SoftRank of fast-soft-sort: P_Q(±x / eps, rho) (l2), exp(P_Q(±x / eps, log rho)) (kl)."""
    with localcontext() as ctx:
        ctx.prec = DIGITS
        n = len(x)
        e = Decimal(float(eps))
        z = [Decimal(float(v)) / e * (-1 if descending else 1) for v in x]
        order = sorted(range(n), key=lambda i: -z[i])
        s = [z[i] for i in order]
        rho = [Decimal(n - i) for i in range(n)]
        w = rho if regularization == "l2" else [r.ln() for r in rho]
        v = _isotonic(s, w, regularization)
        primal = [a - b for a, b in zip(s, v, strict=True)]
        if regularization == "kl":
            primal = [p.exp() for p in primal]
        out = np.empty(n)
        for j, i in enumerate(order):
            out[i] = float(primal[j])
        return out


def soft_sort_oracle(
    x: np.ndarray, eps: float, descending: bool, regularization: str
) -> np.ndarray:
    """SoftSort of fast-soft-sort: sign * (rho / eps - Isotonic(rho / eps, sort_desc(sign * x)))."""
    with localcontext() as ctx:
        ctx.prec = DIGITS
        n = len(x)
        sign = 1 if descending else -1
        e = Decimal(float(eps))
        s = sorted((Decimal(float(v)) * sign for v in x), reverse=True)
        w = [Decimal(n - i) / e for i in range(n)]
        v = _isotonic(w, s, regularization)
        return np.array([float(sign * (a - b)) for a, b in zip(w, v, strict=True)])


# ----------------------------------------------- sparse top-k in 120-digit decimals (any scale)


def _bisect_decreasing(total, target: Decimal, lo: Decimal, hi: Decimal) -> Decimal:  # type: ignore[no-untyped-def]
    """The root of the non-increasing ``total(t) = target`` in [lo, hi] by 420 bisections."""
    for _ in range(420):
        mid = (lo + hi) / 2
        if total(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _power(z: Decimal, r: Decimal) -> Decimal:
    return z**r if z > 0 else Decimal(0)


def decimal_sparse_mask(x: np.ndarray, k: int, eps: float, p: float) -> np.ndarray:
    """y_i = clip(((x_i - tau)_+ / eps)^r, 0, 1) with sum y = k (Sander et al. 2023, the mask)."""
    with localcontext() as ctx:
        ctx.prec = DIGITS
        xs = [Decimal(float(v)) for v in x]
        e = Decimal(float(eps))
        r = 1 / (Decimal(float(p)) - 1)
        if abs(r - r.to_integral_value()) < Decimal("1e-9"):
            r = r.to_integral_value()

        def mask(t: Decimal) -> list[Decimal]:
            return [min(_power((v - t) / e, r), Decimal(1)) for v in xs]

        if k == 0 or k >= len(xs):
            return np.full(len(xs), 0.0 if k == 0 else 1.0)
        tau = _bisect_decreasing(lambda t: sum(mask(t)), Decimal(k), min(xs) - e, max(xs))
        return np.array([float(m) for m in mask(tau)])


def decimal_sparse_magnitude(x: np.ndarray, k: int, eps: float, p: float) -> np.ndarray:
    """The de-biased sparse top-k in magnitude: tau > 0 with sum clip(u_i / tau, 0, 1) = k,
    u_i = ((|x_i| - tau)_+ / eps)^r; out = x on tops (u >= tau), sign(x)(u + |x| - tau) on the
    block, 0 elsewhere (tau = 0, out = x when k covers every non-zero)."""
    with localcontext() as ctx:
        ctx.prec = DIGITS
        xs = [Decimal(float(v)) for v in x]
        e = Decimal(float(eps))
        r = 1 / (Decimal(float(p)) - 1)
        if abs(r - r.to_integral_value()) < Decimal("1e-9"):
            r = r.to_integral_value()
        if k >= sum(1 for v in xs if v != 0):
            return np.asarray(x, np.float64)
        if k == 0:
            return np.zeros(len(xs))

        def u(t: Decimal) -> list[Decimal]:
            return [_power((abs(v) - t) / e, r) for v in xs]

        def total(t: Decimal) -> Decimal:
            return sum((min(ui / t, Decimal(1)) for ui in u(t)), Decimal(0))

        top = max(abs(v) for v in xs)
        tau = _bisect_decreasing(total, Decimal(k), top * Decimal("1e-110"), top)
        out = []
        for v, ui in zip(xs, u(tau), strict=True):
            if ui >= tau:
                out.append(float(v))
            elif abs(v) > tau:
                out.append(float((1 if v > 0 else -1) * (ui + abs(v) - tau)))
            else:
                out.append(0.0)
        return np.array(out)


# ------------------------------------------------------------------ SOFT mask at any scale


def soft_mask_oracle(x: np.ndarray, k: int, eps: float) -> np.ndarray:
    """Xie et al. 2020's two-anchor mask, sigmoid(2 (x_i - t) / eps) with sum k, at any scale.

    Scores are exact rationals measured from the k-th largest entry, and the offset ``c`` is
    bisected on the sign of ``sum_rest sigmoid(z) - sum_top sigmoid(-z)`` (= sum sigmoid(z) - k,
    ``top`` the k largest) compared in log space, so the exponentially small tails of a wide gap
    still decide it (``z = u + c`` added exactly, then rounded).
    """
    n = len(x)
    if k <= 0 or k >= n:
        return np.full(n, 0.0 if k <= 0 else 1.0)
    order = np.argsort(-np.asarray(x, np.float64), kind="stable")
    top = set(order[:k].tolist())
    reference = Fraction(float(x[order[k - 1]]))
    u = [2 * (Fraction(float(v)) - reference) / Fraction(float(eps)) for v in x]

    def scores(c: float) -> list[float]:
        return [float(u_i + Fraction(c)) for u_i in u]

    def excess(c: float) -> float:
        z = scores(c)
        rest = _log_sum_exp([_log_sigmoid(z_i) for i, z_i in enumerate(z) if i not in top])
        above = _log_sum_exp([_log_sigmoid(-z_i) for i, z_i in enumerate(z) if i in top])
        return rest - above

    lo, hi = -1e300, 1e300
    while lo < 0.5 * lo + 0.5 * hi < hi:
        c = 0.5 * lo + 0.5 * hi
        if excess(c) > 0:
            hi = c
        else:
            lo = c
    return np.array([math.exp(_log_sigmoid(z_i)) for z_i in scores(0.5 * lo + 0.5 * hi)])


def _log_sigmoid(z: float) -> float:
    return -(max(-z, 0.0) + math.log1p(math.exp(-abs(z))))


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
