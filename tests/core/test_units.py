"""Exact power-of-two changes of units (subnormals rebuilt from their bits)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from core._units import exponent, scale_by_power_of_two


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exponent_and_exact_scaling_over_the_whole_range(dtype: type) -> None:
    finfo = np.finfo(dtype)
    v = np.array(
        [
            finfo.smallest_subnormal,
            3 * finfo.smallest_subnormal,
            finfo.tiny,
            1.0,
            -0.75,
            finfo.max,
            0.0,
        ],
        dtype,
    )
    np.testing.assert_array_equal(jax.jit(exponent)(v), [np.frexp(float(a))[1] for a in v])
    for shift in (-200, -60, -1, 0, 1, 60, 200):
        got = np.asarray(jax.jit(scale_by_power_of_two)(v, np.full(v.shape, shift)))
        with np.errstate(over="ignore", under="ignore"):
            want = np.ldexp(v.astype(np.float64), shift).astype(dtype)
        normal = (np.abs(want) >= finfo.tiny) | (want == 0)  # subnormal results flush on the device
        np.testing.assert_array_equal(got[normal], want[normal])
