"""Sparse soft top-k (mask, values, magnitude) against the paper's vectors and independent oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import core
from tests.compile_counter import compilations
from tests.core import oracles
from tests.core.sweep import max_error_in_ulps, sweep_rows

# Jitted once per static configuration: far fewer compilations than op-by-op eager dispatch.
STATIC = ("p", "solver")
MASK = jax.jit(core.sparse_topk_mask, static_argnames=STATIC)
MAGNITUDE = jax.jit(core.sparse_topk_magnitude, static_argnames=STATIC)
VALUES = jax.jit(core.sparse_topk_values, static_argnames=STATIC)
HARD_MASK = jax.jit(core.hard_topk_mask)
HARD_MAGNITUDE = jax.jit(core.hard_topk_magnitude)

P_VALUES = [2.0, 4.0 / 3.0, 1.5, 3.0]
OPERATORS = {"mask": MASK, "magnitude": MAGNITUDE}


def solvers_for(p: float) -> list[str]:
    return ["threshold", "pav"] + (["dykstra"] if p == 2.0 else [])


# ------------------------------------------------------------------------- paper test vectors


TV2 = np.array([0.3, 0.1, 0.25, -0.4, 0.2])
TV2_EXPECTED = {
    (2.0, 0.1): [1, 0, 0.75, 0, 0.25],
    (2.0, 0.5): [0.675, 0.275, 0.575, 0, 0.475],
    (2.0, 1.0): [0.5875, 0.3875, 0.5375, 0, 0.4875],
    (4 / 3, 0.1): [1, 0, 0.8993002086, 0, 0.1006997914],
    (4 / 3, 0.5): [0.8356848646, 0.1591499015, 0.5967782925, 0, 0.4083869413],
    (4 / 3, 1.0): [0.6669507177, 0.3057795091, 0.5588745639, 0.0052412315, 0.4631539779],
}


@pytest.mark.parametrize(("p", "eps"), list(TV2_EXPECTED))
@pytest.mark.parametrize("solver", ["threshold", "pav"])
def test_tv2_mask_with_pooling(p, eps, solver):
    y = MASK(TV2, 2, epsilon=eps, p=p, solver=solver)
    np.testing.assert_allclose(y, TV2_EXPECTED[(p, eps)], atol=1e-9)
    assert float(jnp.sum(y)) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize(("p", "block"), [(2.0, 5.0), (4 / 3, 5.2692753708)])
def test_tv2_jacobian(p, block):
    jac = jax.jacfwd(lambda x: MASK(x, 2, epsilon=0.1, p=p))(jnp.asarray(TV2))
    expected = np.zeros((5, 5))
    expected[np.ix_([2, 4], [2, 4])] = [[block, -block], [-block, block]]
    np.testing.assert_allclose(jac, expected, atol=1e-8)


@pytest.mark.parametrize(
    ("s", "p2", "p43"),
    [
        (0.5, [1, 0.9166666667, 0, 0.0833333333], [1, 0.9954945816, 0, 0.0045054184]),
        (1.0, [1, 0.5, 0, 0.5], [1, 0.5, 0, 0.5]),
        (1.5, [1, 0.0833333333, 0, 0.9166666667], [1, 0.0045054184, 0, 0.9954945816]),
        (2.5, [1, 0, 0, 1], [1, 0, 0, 1]),
        (3.5, [0.9166666667, 0, 0.0833333333, 1], [0.9954945816, 0, 0.0045054184, 1]),
    ],
)
def test_tv3_figure_one(s, p2, p43):
    x = jnp.array([3.0, 1.0, -1.0 + s, s])
    np.testing.assert_allclose(MASK(x, 2, epsilon=0.6, p=2.0), p2, atol=1e-9)
    np.testing.assert_allclose(MASK(x, 2, epsilon=0.6, p=4 / 3), p43, atol=1e-9)


TV4 = np.array([1.0, -0.95, 0.5, 3.0, -0.2, 0.9])


@pytest.mark.parametrize("solver", ["threshold", "pav", "dykstra"])
def test_tv4_magnitude_p2(solver):
    out = MAGNITUDE(TV4, 3, epsilon=0.3, p=2.0, solver=solver)
    expected = [0.9027777778, -0.6861111111, 0, 3, 0, 0.4694444444]
    np.testing.assert_allclose(out, expected, atol=1e-9)
    jac = jax.jacrev(lambda x: MAGNITUDE(x, 3, epsilon=0.3, p=2.0, solver=solver))(jnp.asarray(TV4))
    a, b = 3.1296296296, 1.2037037037
    expected_jac = np.zeros((6, 6))
    expected_jac[np.ix_([0, 1, 5], [0, 1, 5])] = [[a, b, -b], [b, a, b], [-b, b, a]]
    expected_jac[3, 3] = 1
    np.testing.assert_allclose(jac, expected_jac, atol=1e-6)


@pytest.mark.parametrize("solver", ["threshold", "pav"])
def test_tv4_magnitude_p43_asymmetric_jacobian(solver):
    def f(x):
        return MAGNITUDE(x, 3, epsilon=0.3, p=4 / 3, solver=solver)

    out = f(jnp.asarray(TV4))
    np.testing.assert_allclose(out, [1, -0.7155533091, 0, 3, 0, 0.4194314538], atol=1e-9)
    expected = np.zeros((6, 6))
    expected[0, 0] = expected[3, 3] = 1
    expected[1, 1] = expected[5, 5] = 3.1327971
    expected[1, 5], expected[5, 1] = 2.4804235, 2.6937420
    for jac in (jax.jacfwd(f)(jnp.asarray(TV4)), jax.jacrev(f)(jnp.asarray(TV4))):
        assert np.all(np.isfinite(jac))  # the official code's jacrev is all NaN here
        np.testing.assert_allclose(jac, expected, atol=1e-6)


def test_tv5_ties_pool_and_sparsity():
    np.testing.assert_allclose(
        MASK(jnp.array([0.0, 0.0, -5.0, 5.0]), 2, epsilon=0.01), [0.5, 0.5, 0, 1]
    )
    x = jnp.array([2.0, 0.3, 0.29995, -1.0])
    np.testing.assert_array_equal(MASK(x, 1, epsilon=0.1), [1, 0, 0, 0])
    jac = jax.jacfwd(lambda z: MASK(z, 1, epsilon=0.1))(x)
    np.testing.assert_array_equal(jac, np.zeros((4, 4)))  # the official Dykstra JVP gives ±5 here
    y = np.random.RandomState(0).randn(1000)
    mask = np.asarray(MASK(y, 10, epsilon=1e-2))
    assert set(np.flatnonzero(mask)) == set(np.argsort(-y)[:10])
    magnitude = np.asarray(MAGNITUDE(y, 10, epsilon=1e-3))
    assert np.count_nonzero(magnitude) == 10
    assert np.mean((magnitude - np.asarray(HARD_MAGNITUDE(y, 10))) ** 2) < 5e-4


def test_readme_examples():
    x = jnp.array([-5.0, -2.0, 3.0, 1.0])
    np.testing.assert_allclose(MASK(x, 2, epsilon=1e-2), [0, 0, 1, 1])
    np.testing.assert_allclose(MAGNITUDE(x, 2, epsilon=1e-2), [-5, 0, 3, 0])
    batch = jnp.array(
        [
            [[-11, 1, 4, -7], [5, 1, 4, 1], [-10, -3, 4, -6]],
            [[7, -6, -8, -4], [-1, 9, 8, 4], [0, 0, -5, 5]],
        ],
        dtype=jnp.float32,
    )
    mask = MASK(batch, 2, epsilon=1e-2)
    assert mask.dtype == jnp.float32 and mask.shape == (2, 3, 4)
    np.testing.assert_allclose(mask[1, 2], [0.5, 0.5, 0, 1], atol=1e-6)
    np.testing.assert_allclose(
        mask,
        np.asarray(HARD_MASK(batch, 2)) * (mask > 0.9) + mask * (mask <= 0.9),
        atol=1e-6,
    )
    np.testing.assert_allclose(MAGNITUDE(batch, 2, epsilon=1e-2)[1, 2], [0, 0, -5, 5], atol=1e-5)
    # Gradient example: f(x) = mean((mask(x) + mask(x^2))^2), k = 4, eps = 0.5.
    x = jnp.array(
        [
            -1.6836294,
            0.617691,
            0.09659418,
            -1.5587047,
            -0.76370925,
            -0.77612925,
            -0.09819217,
            0.5910671,
            1.0190237,
            -0.16765739,
        ]
    )

    def f(z):
        return jnp.mean((MASK(z, 4, epsilon=0.5) + MASK(z**2, 4, epsilon=0.5)) ** 2)

    assert float(f(x)) == pytest.approx(0.9220461205, abs=1e-7)
    expected = [
        0,
        0.09063219,
        0.23230658,
        0,
        0.12527114,
        0.05957876,
        -0.13923869,
        0.05559959,
        0,
        -0.09306789,
    ]
    np.testing.assert_allclose(jax.grad(f)(x), expected, atol=1e-7)


# ------------------------------------------------------------------- random batches vs oracles


def random_batch(rows: int, n: int, seed: int, small_eps: bool = False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n))
    x[::7, 1] = x[::7, 2]  # ties
    k = rng.integers(1, n + 1, size=rows)
    eps = 10 ** rng.uniform(-3, -1.5 if small_eps else 1, size=rows)
    return x, k, eps


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("operator", ["mask", "magnitude"])
def test_all_solvers_match_the_pav_oracle(p, operator):
    x, k, eps = random_batch(40, 9, seed=int(p * 100))
    oracle = oracles.pav_mask if operator == "mask" else oracles.pav_magnitude
    expected = np.stack([oracle(x[i], k[i], eps[i], p) for i in range(len(x))])
    # For p > 2 the output is a root (r < 1) of the block gap, so the oracle's own 1e-15 bisection
    # error shows up as ~1e-7 at entries that are exactly 0.
    atol = 2e-9 if p <= 2 else 1e-6
    for solver in ["threshold", "pav"]:
        got = OPERATORS[operator](x, k, epsilon=eps, p=p, solver=solver)
        np.testing.assert_allclose(got, expected, atol=atol, err_msg=solver)
    if operator == "mask":
        bisect = np.stack([oracles.bisection_mask(x[i], k[i], eps[i], p) for i in range(len(x))])
        np.testing.assert_allclose(expected, bisect, atol=1e-6)


@pytest.mark.parametrize("operator", ["mask", "magnitude"])
def test_p2_matches_scipy_isotonic(operator):
    x, k, eps = random_batch(60, 33, seed=3)
    oracle = oracles.scipy_mask_p2 if operator == "mask" else oracles.scipy_magnitude_p2
    expected = np.stack([oracle(x[i], k[i], eps[i]) for i in range(len(x))])
    for solver in ["threshold", "pav"]:
        got = OPERATORS[operator](x, k, epsilon=eps, p=2.0, solver=solver)
        np.testing.assert_allclose(got, expected, atol=1e-12, err_msg=solver)


@pytest.mark.parametrize("operator", ["mask", "magnitude"])
def test_dykstra_matches_where_blocks_are_small(operator):
    x, k, eps = random_batch(60, 33, seed=4, small_eps=True)
    oracle = oracles.scipy_mask_p2 if operator == "mask" else oracles.scipy_magnitude_p2
    expected = np.stack([oracle(x[i], k[i], eps[i]) for i in range(len(x))])
    got = OPERATORS[operator](x, k, epsilon=eps, p=2.0, solver="dykstra")
    np.testing.assert_allclose(got, expected, atol=1e-8)


def test_conditioning_trap_of_bisection_is_avoided():
    # Bisection on the sum alone leaves ~3e-6 here (the magnitude's conditioning); the answer is 0.
    x = jnp.array([2.449, 1.055, 1.021, 0.596])
    for solver in ["threshold", "pav"]:
        out = MAGNITUDE(x, 1, epsilon=0.561, p=4 / 3, solver=solver)
        expected = oracles.pav_magnitude(np.asarray(x), 1, 0.561, 4 / 3)
        np.testing.assert_allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("operator", ["mask", "magnitude"])
@pytest.mark.parametrize("p", [2.0, 4 / 3])
def test_float32_close_to_float64(operator, p):
    x, k, eps = random_batch(50, 64, seed=5)
    f64 = OPERATORS[operator](x, k, epsilon=eps, p=p)
    f32 = OPERATORS[operator](x.astype(np.float32), k, epsilon=eps.astype(np.float32), p=p)
    assert f32.dtype == jnp.float32 and f64.dtype == jnp.float64
    scale = 1.0 if operator == "mask" else np.abs(x).max()
    np.testing.assert_allclose(f32, f64, atol=2e-4 * scale)
    if operator == "mask":
        np.testing.assert_allclose(np.sum(f32, axis=-1), k, rtol=1e-5)


# --------------------------------------------------------------------------------- derivatives


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("operator", ["mask", "magnitude", "values"])
def test_jvp_and_vjp_match_finite_differences(p, operator):
    fn = {
        "mask": MASK,
        "magnitude": MAGNITUDE,
        "values": VALUES,
    }[operator]
    rng = np.random.default_rng(11)
    for trial in range(6):
        n = 12
        x = rng.normal(size=n)
        k = int(rng.integers(1, n))
        eps = float(10 ** rng.uniform(-1, 0.5))
        t = rng.normal(size=n)
        ct = rng.normal(size=n)

        def f(z, k=k, eps=eps):
            return fn(z, k, epsilon=eps, p=p)

        y, jvp = jax.jvp(f, (jnp.asarray(x),), (jnp.asarray(t),))
        np.testing.assert_allclose(
            jvp, oracles.central_difference(f, x, t), atol=1e-5, err_msg=f"trial {trial}"
        )
        (vjp,) = jax.vjp(f, jnp.asarray(x))[1](jnp.asarray(ct))
        assert float(jnp.dot(vjp, t)) == pytest.approx(float(jnp.dot(ct, jvp)), abs=1e-9)
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("p", [2.0, 4 / 3])
def test_check_grads_and_epsilon_derivative(p):
    x = jnp.array([0.4, -0.3, 0.35, 1.2, 0.1, 0.38])
    check_grads(lambda z: MASK(z, 3, epsilon=0.3, p=p), (x,), order=1, modes=("fwd", "rev"))
    check_grads(
        lambda z: MAGNITUDE(z, 2, epsilon=0.3, p=p),
        (x,),
        order=1,
        modes=("fwd", "rev"),
    )
    for fn in OPERATORS.values():

        def of_eps(e, fn=fn):
            return fn(x, 3, epsilon=e, p=p)

        _, deriv = jax.jvp(of_eps, (jnp.asarray(0.3),), (jnp.asarray(1.0),))
        fd = oracles.central_difference(
            lambda e: of_eps(jnp.asarray(e)), np.float64(0.3), np.float64(1.0)
        )
        np.testing.assert_allclose(deriv, fd, atol=1e-6)


@pytest.mark.parametrize("p", [2.0, 4 / 3, 3.0])
@pytest.mark.parametrize("operator", ["mask", "magnitude", "values"])
def test_derivatives_are_finite_and_zero_outside_the_support(operator, p):
    fn = {"mask": MASK, "magnitude": MAGNITUDE, "values": VALUES}[operator]
    # Degenerate rows, padded to one shape: all ties; k = n; zeros and magnitude ties; each at a
    # tiny, a moderate and a huge epsilon.
    cases = [([0.0] * 6, 3), ([1.0, 1.0, 1.0, -2.0], 4), ([3.0, -1.0, 0.0, 0.0, 2.0], 2)]
    rows = [
        (row + [7.0] * (6 - len(row)), k, len(row), e)
        for row, k in cases
        for e in (1e-8, 0.1, 10.0)
    ]
    x = jnp.array([r[0] for r in rows])
    k, lengths, eps = (jnp.array([r[i] for r in rows]) for i in (1, 2, 3))

    @jax.jit
    def outputs_and_jacobians(x):
        def f(z):
            return fn(z, k, epsilon=eps, p=p, lengths=lengths)

        return f(x), jax.jacfwd(f)(x), jax.jacrev(f)(x)

    out, jf, jr = (np.asarray(a) for a in outputs_and_jacobians(x))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(jf)) and np.all(np.isfinite(jr))
    np.testing.assert_allclose(jf, jr, atol=1e-12 * max(1.0, np.abs(jf).max()))
    mask = (
        np.asarray(MASK(x, k, epsilon=eps, p=p, lengths=lengths)) if operator == "values" else out
    )
    for row in range(len(rows)):
        outside = (
            mask[row] == 0
        )  # values: x * mask has derivative mask there, i.e. zero off support
        jacobian = jf[row, :, row, :]
        assert np.all(jacobian[outside] == 0) and np.all(jacobian[:, outside] == 0)
        assert np.all(jf[row, :, np.arange(len(rows)) != row, :] == 0)  # rows are independent


def test_padded_entries_get_zero_output_and_zero_derivative():
    x = jnp.array([[0.5, 0.4, 0.45, 9.0, 9.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    lengths = jnp.array([3, 5])

    def f(z):
        return MAGNITUDE(z, 2, epsilon=0.2, lengths=lengths)

    out = f(x)
    assert np.all(np.asarray(out)[0, 3:] == 0)
    jac = jax.jacrev(f)(x)
    assert np.all(np.asarray(jac)[0, 3:] == 0) and np.all(np.asarray(jac)[:, :, 0, 3:] == 0)


# ---------------------------------------------------------------------------------- invariants


def test_no_recompilation_for_new_k_epsilon_or_lengths():
    f = jax.jit(lambda x, k, e, l: MASK(x, k, epsilon=e, lengths=l))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32)), jnp.float32)

    def call(k, e, l):
        return f(
            x, jnp.full(8, k, jnp.int32), jnp.full(8, e, jnp.float32), jnp.full(8, l, jnp.int32)
        )

    call(2, 0.1, 32).block_until_ready()
    before = compilations()
    for k, e, l in [(5, 0.5, 20), (1, 1e-3, 32), (7, 3.0, 9)]:
        call(k, e, l).block_until_ready()
    assert compilations() == before


# --------------------------------------------------------------- exact at every scale and epsilon
#
# Every solver against the 120-digit decimal oracles (bisection on tau in decimals), over the
# scale/epsilon sweep of tests/core/sweep.py, one compiled call per dtype.

SWEEP_SOLVERS = (*((s, p) for s in ("threshold", "pav") for p in (4 / 3, 2.0)), ("dykstra", 2.0))


def _sweep_all(x: jax.Array, eps: jax.Array, solvers: tuple[tuple[str, float], ...]) -> dict:
    return {
        (op, solver, p): fn(x, 2, epsilon=eps, p=p, solver=solver)
        for solver, p in solvers
        for op, fn in (("mask", core.sparse_topk_mask), ("magnitude", core.sparse_topk_magnitude))
    }


sweep_all = jax.jit(_sweep_all, static_argnums=2)


def _check_sweep(dtype: type, solvers: tuple[tuple[str, float], ...]) -> None:
    x, eps = sweep_rows(dtype)
    got = sweep_all(x, eps, solvers)
    want = {
        (op, p): [oracle(x[i].astype(np.float64), 2, float(eps[i]), p) for i in range(len(x))]
        for op, oracle in (
            ("mask", oracles.decimal_sparse_mask),
            ("magnitude", oracles.decimal_sparse_magnitude),
        )
        for p in {p for _, p in solvers}
    }
    for (op, solver, p), out in got.items():
        out = np.asarray(out, np.float64)
        bound = 128 if solver == "dykstra" else 8  # Dykstra stops at 10 ulps of movement a cycle
        for i in range(len(x)):
            scale = 1.0 if op == "mask" else float(np.abs(x[i]).max()) or 1.0
            err = max_error_in_ulps(out[i], want[(op, p)][i], scale, dtype)
            assert err <= bound, (op, solver, p, i, x[i], eps[i], out[i], want[(op, p)][i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_solver_is_exact_at_every_scale_and_epsilon(dtype: type) -> None:
    _check_sweep(dtype, SWEEP_SOLVERS)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_general_p_is_exact_at_every_scale_and_epsilon(dtype: type) -> None:
    _check_sweep(dtype, (("threshold", 1.5), ("pav", 1.5)))


def test_issue_12_sparse_examples() -> None:
    # The row whose SOFT mask was NaN, and a root near 1e-9 inside a bracket of ±1e30 (after the
    # change of units), which the threshold solver's bisection used to run out of steps on.
    x = jnp.array([3e38, -3e38, 1.0, 0.0, 0.0, 0.0], jnp.float32)
    for p in (4 / 3, 2.0):
        for solver in ("threshold", "pav"):
            got = core.sparse_topk_mask(x, 2, epsilon=0.1, p=p, solver=solver)
            want = oracles.decimal_sparse_mask(np.asarray(x, np.float64), 2, 0.1, p)
            np.testing.assert_allclose(got, want, atol=1e-6)
    # Dykstra serves p = 2 only, and says so before computing anything.
    assert core.SOLVER_P["dykstra"] == (2.0,)
    with pytest.raises(ValueError, match="SOLVER_P"):
        core.sparse_topk_mask(jnp.array([1.0, 2.0]), 1, solver="dykstra")


@pytest.mark.parametrize("operator", ["mask", "magnitude"])
def test_derivatives_match_finite_differences_at_extreme_scales(operator: str) -> None:
    # float64 rows at 1e-30 and 1e30, each with an epsilon that keeps it soft there (the
    # magnitude's epsilon is in units of x^(2 - p)).
    rng = np.random.default_rng(21)
    base = rng.normal(size=(2, 7))
    x = np.concatenate([base * 1e-30, base * 1e30])
    scale = np.abs(x).max(axis=-1)
    t = rng.normal(size=x.shape) * scale[:, None]
    u = rng.normal(size=x.shape)
    fn = core.sparse_topk_mask if operator == "mask" else core.sparse_topk_magnitude
    for p in (4 / 3, 2.0):
        eps = 0.4 * (scale if operator == "mask" else scale ** (2 - p))

        @jax.jit
        def derivatives(x, t, u, h, eps=eps, p=p):  # type: ignore[no-untyped-def]
            def f(z):  # type: ignore[no-untyped-def]
                return fn(z, 3, epsilon=eps, p=p)

            _, jvp = jax.jvp(f, (x,), (t,))
            vjp = jax.vjp(f, x)[1](u)[0]
            return jvp, vjp, (f(x + h * t) - f(x - h * t)) / (2 * h)

        jvp, vjp, fd = (np.asarray(a) for a in derivatives(x, t, u, 1e-7))
        assert np.all(np.isfinite(jvp)) and np.all(np.isfinite(vjp))
        np.testing.assert_allclose(jvp, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
        np.testing.assert_allclose(
            np.sum(u * jvp, axis=-1), np.sum(vjp * t, axis=-1), rtol=1e-9, atol=1e-300
        )


def test_ties_at_the_threshold_share_the_mass_when_eps_is_below_the_float_spacing() -> None:
    # x - tau cannot be resolved there (ulp(1e8) = 8 > eps), so tau rounds onto the tied value:
    # the mask used to sum to 4 (threshold solver) or 0 (PAV) instead of k = 2.
    for scale, eps in ((1.0, 1e-10), (1e8, 0.1)):
        x = jnp.array([1, 1, 1, 1, 0.5], jnp.float32) * scale
        for p in (4 / 3, 2.0):
            for solver in ("threshold", "pav"):
                np.testing.assert_allclose(
                    core.sparse_topk_mask(x, 2, epsilon=eps, p=p, solver=solver), [0.5] * 4 + [0]
                )
                out = core.sparse_topk_magnitude(x, 2, epsilon=eps, p=p, solver=solver)
                want = oracles.decimal_sparse_magnitude(np.asarray(x, np.float64), 2, eps, p)
                np.testing.assert_allclose(out, want, rtol=1e-6)
        jac = jax.jacfwd(lambda z: core.sparse_topk_mask(z, 2, epsilon=1e-10, p=2.0))(x / scale)
        # The mass stays k: columns sum to 0 (to the rounding of entries of size 1 / eps).
        np.testing.assert_allclose(jac.sum(axis=0), 0, atol=1e-5 * float(jnp.abs(jac).max()))
