"""Rows at every scale and epsilon for the audits of tests/core (one batch per dtype, so that each
operator compiles once): scales ``1e-30 ... 3e38`` times epsilons ``1e-30 ... 1e30`` relative to
the scale (clipped to the positive float32 range), random rows and rows mixing magnitudes."""

from __future__ import annotations

import itertools

import numpy as np

SCALES = (1e-30, 1e-20, 1e-8, 1.0, 1e8, 1e20, 3e38)
RELATIVE_EPSILONS = (1e-30, 1e-8, 1e-2, 1.0, 1e2, 1e30)


def sweep_rows(dtype: type, n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, epsilon)``: two rows per (scale, epsilon), plus rows from the issue reports."""
    rng = np.random.default_rng(seed)
    rows, epsilons = [], []
    mixed = np.resize([1.0, -1.0, 1e-8, 0.0, 0.5, -0.5], n)
    for a, r in itertools.product(SCALES, RELATIVE_EPSILONS):
        rows += [a * rng.normal(size=n) / 3, a * mixed]
        epsilons += [min(max(a * r, 1.5e-45), 3.4e38)] * 2
    rows.append(np.resize([3e38, -3e38, 1.0, 0.0], n))
    epsilons.append(0.1)
    return np.array(rows, dtype), np.array(epsilons, dtype)


def max_error_in_ulps(got: np.ndarray, want: np.ndarray, scale: float, dtype: type) -> float:
    """``max |got - want|`` in ulps of ``scale`` (inf when ``got`` is not finite)."""
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - want)) / (scale * np.finfo(dtype).eps))
