"""Hypothesis properties of the sparse operators, on one padded shape so nothing recompiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import core
from tests.core import oracles

N = 12
STATIC = ("p", "solver")
MASK = jax.jit(core.sparse_topk_mask, static_argnames=STATIC)
MAGNITUDE = jax.jit(core.sparse_topk_magnitude, static_argnames=STATIC)

# Scores on one scale: magnitudes below 1e-6 (relative to ~10) are 0, as the solver's tolerance is
# relative to the row's scale (1e-187 next to 1 is not a distinct magnitude at float precision).
finite = st.floats(-10, 10, allow_nan=False, width=64).map(lambda v: v if abs(v) > 1e-6 else 0.0)


@st.composite
def rows(draw):
    n = draw(st.integers(1, N))
    x = np.array(draw(st.lists(finite, min_size=n, max_size=n)))
    k = draw(st.integers(1, n))
    eps = draw(st.floats(1e-3, 10.0))
    p = draw(st.sampled_from([2.0, 4 / 3, 1.5]))
    return x, k, eps, p


def padded(x: np.ndarray, fill: float = 123.0) -> np.ndarray:
    return np.concatenate([x, np.full(N - len(x), fill)])


# Derandomised so CI is reproducible; the example a random run once found is a regression test below.
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True)


@PROPERTY
@given(rows())
def test_mask_is_in_the_hypersimplex_and_ragged_equals_unpadded(case):
    x, k, eps, p = case
    y = np.asarray(MASK(padded(x), k, epsilon=eps, p=p, lengths=len(x)))
    assert np.all(y >= 0) and np.all(y <= 1)
    assert abs(y.sum() - k) < 1e-9
    assert np.all(y[len(x) :] == 0)
    np.testing.assert_allclose(y[: len(x)], oracles.pav_mask(x, k, eps, p), atol=1e-8)


@PROPERTY
@given(rows(), st.randoms())
def test_permutation_equivariance(case, random):
    x, k, eps, p = case
    perm = np.arange(len(x))
    random.shuffle(perm)
    for fn in (MASK, MAGNITUDE):
        y = np.asarray(fn(padded(x), k, epsilon=eps, p=p, lengths=len(x)))[: len(x)]
        y_perm = np.asarray(fn(padded(x[perm]), k, epsilon=eps, p=p, lengths=len(x)))[: len(x)]
        np.testing.assert_allclose(y_perm, y[perm], atol=1e-9)


@PROPERTY
@given(rows(), st.integers(0, N - 1), st.floats(0.0, 3.0))
def test_mask_is_monotone_in_its_own_score(case, index, bump):
    x, k, eps, p = case
    index %= len(x)
    y = np.asarray(MASK(padded(x), k, epsilon=eps, p=p, lengths=len(x)))
    x2 = x.copy()
    x2[index] += bump
    y2 = np.asarray(MASK(padded(x2), k, epsilon=eps, p=p, lengths=len(x)))
    assert y2[index] >= y[index] - 1e-9


@PROPERTY
@given(rows())
def test_magnitude_keeps_signs_and_k_or_fewer_exact_outputs(case):
    x, k, eps, p = case
    out = np.asarray(MAGNITUDE(padded(x), k, epsilon=eps, p=p, lengths=len(x)))[: len(x)]
    np.testing.assert_allclose(out, oracles.pav_magnitude(x, k, eps, p), atol=1e-8)
    assert np.all(out * x >= 0)
    assert np.all(np.abs(out) <= np.abs(x) + 1e-12)
    assert np.sum((out == x) & (x != 0)) <= k


@PROPERTY
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=N, unique=True), st.data())
def test_tends_to_the_hard_operator_as_epsilon_vanishes(values, data):
    x = np.array(values)
    k = data.draw(st.integers(1, len(x)))
    gaps = np.abs(np.subtract.outer(x, x))[~np.eye(len(x), dtype=bool)]
    assume(gaps.min() > 1e-6)  # relative to the data's scale; the solver's tolerance is ~1e-15
    eps = float(gaps.min()) / 4  # below every gap, the soft mask is exactly the hard one
    for p in (2.0, 4 / 3):
        y = np.asarray(MASK(padded(x), k, epsilon=eps, p=p, lengths=len(x)))[: len(x)]
        np.testing.assert_allclose(y, oracles.hard_mask(x, k), atol=1e-9)
        mag = np.asarray(MAGNITUDE(padded(x), k, epsilon=1e-9, p=p, lengths=len(x)))[: len(x)]
        hard = x * oracles.hard_mask(np.abs(x), k)
        if len(np.unique(np.abs(x))) == len(x):
            np.testing.assert_allclose(mag, hard, atol=1e-6)


def test_vmap_equals_loop_and_jit_equals_eager():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, N))
    k = rng.integers(1, N, size=7)
    eps = rng.uniform(0.05, 2, size=7)
    for fn in (core.sparse_topk_mask, core.sparse_topk_magnitude, core.sparse_topk_values):
        batched = fn(x, k, epsilon=eps)
        mapped = jax.vmap(lambda r, kk, e, fn=fn: fn(r, kk, epsilon=e))(x, k, eps)
        looped = np.stack(
            [np.asarray(fn(x[i], int(k[i]), epsilon=float(eps[i]))) for i in range(7)]
        )
        jitted = jax.jit(lambda a, b, c, fn=fn: fn(a, b, epsilon=c))(x, k, eps)
        np.testing.assert_allclose(batched, looped, atol=1e-12)
        np.testing.assert_allclose(mapped, looped, atol=1e-12)
        np.testing.assert_allclose(jitted, looped, atol=1e-12)


def test_solvers_report_iterations_and_convergence():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(16, 256)))
    valid = jnp.ones(x.shape, bool)
    sol = core.solve_threshold(
        x, valid, jnp.full(16, 10), jnp.full(16, 0.1), p=4 / 3, magnitude=False
    )
    assert bool(jnp.all(sol.converged)) and int(jnp.max(sol.iterations)) < 100
    capped = core.solve_threshold(
        x, valid, jnp.full(16, 10), jnp.full(16, 0.1), p=4 / 3, magnitude=False, max_iter=1
    )
    assert not bool(jnp.all(capped.converged))  # a cap is reported, not raised


def test_tiny_epsilon_keeps_the_block_mass_exact():
    """Found by a random run: eps = 1e-9 against |x| ~ 4.7 left the kept entry 1.8e-6 short.

    ``x - tau`` then has ~7 significant digits, so one ulp of ``tau`` moved the pooled output by
    1.6e-6; the block's outputs must still carry exactly ``k - #tops``.
    """
    x = np.array([0, 4, 4.5, 4.625, 4.5625, 4.6875])
    hard = oracles.hard_mask(x, 1)
    for p in (2.0, 4 / 3, 1.5):
        for eps in (1e-9, 1e-12):
            for solver in ("threshold", "pav"):
                mag = np.asarray(
                    MAGNITUDE(padded(x), 1, epsilon=eps, p=p, solver=solver, lengths=6)
                )
                np.testing.assert_allclose(mag[:6], x * hard, rtol=0, atol=1e-13)
                mask = np.asarray(MASK(padded(x), 1, epsilon=eps, p=p, solver=solver, lengths=6))
                np.testing.assert_allclose(mask[:6], hard, rtol=0, atol=1e-13)
