"""Hard top-k with k as data: exact selection against a stable NumPy sort."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import core
from tests.compile_counter import compilations
from tests.core import oracles
from tests.core.sweep import sweep_rows

HARD_MASK = jax.jit(core.hard_topk_mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_a_stable_sort_with_ties_zeros_and_extremes(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 23)).astype(dtype)
    x[::3, 4] = x[::3, 9]  # ties: the lower index wins
    x[::5] = np.round(x[::5])  # many ties
    x[1] = 0.0
    x[2, :5] = -0.0  # -0 == +0
    x[3, 0] = np.finfo(dtype).max
    x[3, 1] = -np.finfo(dtype).max
    x[4, 2] = np.finfo(dtype).tiny
    k = rng.integers(0, 24, size=300)
    got = np.asarray(HARD_MASK(x, k))
    expected = np.stack([oracles.hard_mask(x[i], k[i]) for i in range(300)])
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == dtype


def test_values_magnitude_ragged_and_gradients():
    x = jnp.array([[1.0, -3.0, 2.0, 0.5, 9.0], [-1.0, 4.0, -5.0, 2.0, 3.0]])
    lengths = jnp.array([4, 5])
    np.testing.assert_array_equal(
        core.hard_topk_values(x, 2, lengths=lengths), [[1, 0, 2, 0, 0], [0, 4, 0, 0, 3]]
    )
    np.testing.assert_array_equal(
        core.hard_topk_magnitude(x, 2, lengths=lengths), [[0, -3, 2, 0, 0], [0, 4, -5, 0, 0]]
    )
    np.testing.assert_array_equal(core.hard_topk_mask(x, jnp.array([0, 5])), [[0] * 5, [1] * 5])
    grad = jax.grad(lambda z: jnp.sum(core.hard_topk_values(z, 2) * jnp.arange(5.0)))(x[0])
    np.testing.assert_array_equal(grad, [0, 0, 2, 0, 4])
    assert np.all(jax.jacfwd(lambda z: core.hard_topk_mask(z, 2))(x[0]) == 0)


def test_new_k_compiles_nothing():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 64)), jnp.float32)
    HARD_MASK(x, jnp.full(4, 2, jnp.int32)).block_until_ready()
    before = compilations()
    for k in (1, 7, 64):
        HARD_MASK(x, jnp.full(4, k, jnp.int32)).block_until_ready()
    assert compilations() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_at_every_scale_and_for_subnormal_scores(dtype: type) -> None:
    # Selection on the floats' bit patterns: subnormal scores keep their order (the device's float
    # comparisons flush them to 0, which used to tie them with 0).
    x, _ = sweep_rows(dtype)
    sub = np.finfo(dtype).smallest_subnormal
    x = np.concatenate([x, np.array([[3 * sub, 0, -sub, 2 * sub, sub, 0]], dtype)])
    # (Values and magnitudes of subnormal scores are themselves subnormal: the device flushes
    # them, the limit stated by core.min_row_scale.)
    got = jax.jit(lambda z: (core.hard_topk_mask(z, 2), core.hard_topk_mask(jnp.abs(z), 2)))(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(got[0][i], oracles.hard_mask(x[i], 2))
        np.testing.assert_array_equal(got[1][i], oracles.hard_mask(np.abs(x[i]), 2))
