"""Isotonic regression (device PAV and Dykstra) against SciPy."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.optimize import isotonic_regression as scipy_isotonic

import core
from core import _isotonic
from tests.core import oracles
from tests.core.sweep import max_error_in_ulps, sweep_rows

ISO = jax.jit(core.isotonic_regression, static_argnames=("increasing", "solver"))


@pytest.mark.parametrize("increasing", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_pav_matches_scipy(increasing, weighted):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 40)) + np.linspace(0, 3, 40) * (1 if increasing else -1) * 0.3
    y[::4, 10:15] = 0.25  # ties
    w = rng.uniform(0.1, 3, size=y.shape) if weighted else np.ones_like(y)
    got = ISO(y, weights=w, increasing=increasing)
    expected = np.stack(
        [scipy_isotonic(y[i], weights=w[i], increasing=increasing).x for i in range(50)]
    )
    np.testing.assert_allclose(got, expected, atol=1e-12)
    got32 = ISO(y.astype(np.float32), weights=w.astype(np.float32), increasing=increasing)
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(got32, expected, atol=1e-5)


def test_dykstra_converges_to_pav_on_small_blocks_and_reports():
    rng = np.random.default_rng(1)
    y = np.sort(rng.normal(size=(20, 31)), axis=-1)[:, ::-1] + 0.05 * rng.normal(size=(20, 31))
    expected = np.stack([scipy_isotonic(r, increasing=False).x for r in y])
    np.testing.assert_allclose(ISO(y, solver="dykstra"), expected, atol=1e-9)
    valid = jnp.ones(y.shape, bool)
    sol = core.dykstra_decreasing(jnp.asarray(y), jnp.ones_like(jnp.asarray(y)), valid)
    assert bool(jnp.all(sol.converged)) and int(sol.iterations.max()) > 1
    capped = core.dykstra_decreasing(jnp.asarray(y[:, ::-1]), jnp.ones(y.shape), valid, max_iter=3)
    assert not bool(jnp.all(capped.converged)) and int(capped.iterations.max()) == 3


def test_ragged_rows_equal_unpadded():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(6, 16))
    lengths = np.array([16, 1, 5, 9, 0, 12])
    got = np.asarray(ISO(y, lengths=lengths))
    for i, n in enumerate(lengths):
        if n:
            np.testing.assert_allclose(
                got[i, :n], scipy_isotonic(y[i, :n], increasing=False).x, atol=1e-12
            )
        assert np.all(got[i, n:] == 0)


@pytest.mark.parametrize("solver", ["pav", "dykstra"])
def test_jvp_vjp_are_weighted_block_averages(solver):
    rng = np.random.default_rng(3)
    y = np.array([1.0, 3.0, 2.0, 0.5, 0.7, -1.0, -0.2, -3.0])
    w = rng.uniform(0.5, 2.0, size=8)
    t = rng.normal(size=8)

    def f(z):
        return core.isotonic_regression(z, weights=w, solver=solver)

    _, jvp = jax.jvp(f, (jnp.asarray(y),), (jnp.asarray(t),))
    np.testing.assert_allclose(jvp, oracles.central_difference(f, y, t), atol=1e-7)
    check_grads(f, (jnp.asarray(y),), order=1, modes=("fwd", "rev"))

    def g(weights):
        return core.isotonic_regression(jnp.asarray(y), weights=weights, solver=solver)

    _, jvp_w = jax.jvp(g, (jnp.asarray(w),), (jnp.asarray(t),))
    np.testing.assert_allclose(jvp_w, oracles.central_difference(g, w, t), atol=1e-7)


def test_generic_pav_accepts_custom_block_statistics():
    # L1-free sanity: a "max" statistic turns PAV into the running upper envelope check.
    y = jnp.array([1.0, 3.0, 2.0, 0.0])
    sol = core.pav_decreasing(
        (jnp.ones(4), y),
        lambda a, b: (a[0] + b[0], (a[0] * a[1] + b[0] * b[1]) / (a[0] + b[0])),
        lambda s: s[1],
        jnp.array(4),
    )
    np.testing.assert_allclose(sol.values, [2, 2, 2, 0])
    np.testing.assert_array_equal(sol.blocks, [0, 0, 0, 1])
    assert int(sol.iterations) == 6  # 4 pushes and 2 merges


def test_device_pav_updates_its_stack_in_place():
    """Each PAV step must be O(1): no full-length copy of the loop's stack inside the loop.

    A structural check on the compiled program (speed itself is measured in bench/, not here):
    n-length copies are allowed only where the loop starts (of the inputs, which become the stack),
    never of a loop-carried buffer (a ``get-tuple-element`` of the loop state). Before the fix XLA
    copied the three f32 stack buffers twice per step, which made long rows quadratic.
    """
    n = 512
    y = jnp.linspace(1.0, -1.0, n, dtype=jnp.float32) ** 3
    w = jnp.ones(n, jnp.float32)

    def pav(y, w):
        stats = _isotonic._l2_stats(y, w)
        return _isotonic.pav_decreasing(stats, _isotonic._l2_merge, _isotonic._l2_value, n)

    hlo = jax.jit(pav).lower(y, w).compile().as_text()
    carried_copies = re.findall(rf"\[{n}\]\{{0\}} copy\(%(?:get-tuple-element|copy)", hlo)
    assert not carried_copies, hlo
    np.testing.assert_allclose(pav(y, w).values, y, rtol=1e-6)  # already decreasing: unchanged


# --------------------------------------------------------------- exact at every scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_at_every_scale_against_scipy(dtype: type) -> None:
    # Both solvers work in units of a power of two of the row's max: the PAV block means used to
    # overflow for ±3.4e38, and Dykstra's tolerance (10 ulp of 1 + max|y|) stopped at once on 1e-9.
    x, _ = sweep_rows(dtype)
    x = np.concatenate([x, np.array([[3.4e38, -3.4e38, 3.4e38, -3.4e38, 1, 0]], dtype)])

    @jax.jit
    def fits(y):  # type: ignore[no-untyped-def]
        return {
            (solver, inc): core.isotonic_regression(y, increasing=inc, solver=solver)
            for solver in ("pav", "dykstra")
            for inc in (False, True)
        }

    for (solver, inc), got in fits(x).items():
        got = np.asarray(got, np.float64)
        bound = 128 if solver == "dykstra" else 4
        for i in range(len(x)):
            want = scipy_isotonic(x[i].astype(np.float64), increasing=inc).x
            scale = float(np.abs(x[i]).max()) or 1.0
            assert max_error_in_ulps(got[i], want, scale, dtype) <= bound, (solver, inc, i)
