"""Row helpers at the ends of the float range: subnormals (which XLA flushes to zero in
arithmetic), reciprocals that would be subnormal, differences that would overflow."""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core._rows import descending_order, gap_ratio, negate, ordered_keys, ratio

TINY = float(np.finfo(np.float32).tiny)
SUB = float(np.finfo(np.float32).smallest_subnormal)


def exact(a: float, b: float, eps: float) -> np.float32:
    """``(a - b) / eps`` in exact rationals, rounded to float32 (inf when not representable)."""
    q = (Fraction(a) - Fraction(b)) / Fraction(eps)
    with np.errstate(over="ignore"):
        return np.float32(float(q)) if abs(q) < 2**1000 else np.float32(np.sign(q) * np.inf)


def test_xla_flushes_subnormals_which_is_why_these_helpers_exist() -> None:
    # If this ever fails, the device stopped flushing; the helpers stay correct either way.
    eps = jnp.float32(SUB)
    assert float(jax.jit(lambda e: 2 * e)(eps)) == 0.0


def test_ratio_and_gap_ratio_agree_with_exact_rationals_over_the_whole_range() -> None:
    values = [3.4e38, -3.4e38, 1e30, 1.0, 1e-30, 1.3e-38, 1.2e-38, 1e-39, SUB, 0.0, -1e-39]
    epsilons = [SUB, 1e-40, TINY, 1e-30, 1.0, 1e30, 3.4e38]
    a, b, e = (
        np.array(v, np.float32)
        for v in zip(*[(x, y, z) for x in values for y in values for z in epsilons], strict=True)
    )
    got = np.asarray(jax.jit(gap_ratio)(a, b, e), np.float64)
    got_ratio = np.asarray(jax.jit(ratio)(a, e), np.float64)
    for i in range(len(a)):
        want = np.float32(
            exact(float(a[i]), float(b[i]), float(e[i]))
        )  # inf when not representable
        np.testing.assert_allclose(
            got[i], want, rtol=3e-7, atol=TINY, err_msg=f"{a[i]} {b[i]} {e[i]}"
        )
        if 0 < abs(a[i]) < TINY:  # ratio's numerator is a device value: a subnormal one is 0
            continue
        want = exact(float(a[i]), 0.0, float(e[i]))
        np.testing.assert_allclose(
            got_ratio[i], want, rtol=3e-7, atol=TINY, err_msg=f"{a[i]} {e[i]}"
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_and_negation_keep_subnormals(dtype: type) -> None:
    sub = np.finfo(dtype).smallest_subnormal
    x = np.array([[3 * sub, 0.0, -sub, -0.0, sub, 1.0, -np.inf]], dtype)
    keys = np.asarray(jax.jit(ordered_keys)(x))
    assert np.array_equal(np.argsort(keys[0], kind="stable"), np.argsort(x[0], kind="stable"))
    assert keys[0, 1] == keys[0, 3]  # -0 == +0
    valid = np.ones(x.shape, bool)
    np.testing.assert_array_equal(jax.jit(descending_order)(x, valid)[0], [5, 0, 4, 1, 3, 2, 6])
    order = jax.jit(lambda v, m: descending_order(v, m, negated=True))(x, valid)
    np.testing.assert_array_equal(order[0], [6, 2, 1, 3, 4, 0, 5])
    np.testing.assert_array_equal(jax.jit(negate)(x).view(np.uint8), (-x).view(np.uint8))
