"""Soft sort / soft rank by projection onto the permutahedron: fast-soft-sort README vectors, hard limits,
permutation properties, derivatives, padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy.optimize import isotonic_regression as scipy_isotonic

import core
from tests.compile_counter import compilations

STATIC = ("descending", "regularization")
soft_sort = jax.jit(core.soft_sort, static_argnames=STATIC)
soft_rank = jax.jit(core.soft_rank, static_argnames=STATIC)

README = jnp.array([[5.0, 1.0, 2.0], [2.0, 1.0, 5.0]], jnp.float64)


def l2_rank_oracle(x: np.ndarray, eps: float) -> np.ndarray:
    """Euclidean projection of x / eps onto P(rho) with SciPy's isotonic regression (ascending)."""
    n = len(x)
    z = x / eps
    order = np.argsort(-z, kind="stable")
    s = z[order]
    rho = np.arange(n, 0, -1, dtype=np.float64)
    dual = scipy_isotonic(s - rho, increasing=False).x
    out = np.empty(n)
    out[order] = s - dual
    return out


def l2_sort_oracle(x: np.ndarray, eps: float) -> np.ndarray:
    """Ascending l2 soft sort: -(rho/eps - iso_dec(rho/eps - sort_desc(-x)))."""
    n = len(x)
    w = np.arange(n, 0, -1, dtype=np.float64) / eps
    s = np.sort(-x)[::-1]
    return -(w - scipy_isotonic(w - s, increasing=False).x)


# ------------------------------------------------------------------------------- README vectors


def test_fast_soft_sort_readme_vectors() -> None:
    for dtype in (jnp.float32, jnp.float64):
        x = README.astype(dtype)
        np.testing.assert_allclose(
            soft_sort(x, epsilon=1.0), [[5 / 3, 8 / 3, 11 / 3]] * 2, rtol=1e-6
        )
        np.testing.assert_allclose(soft_sort(x, epsilon=0.1), [[1, 2, 5]] * 2, rtol=1e-6)
        np.testing.assert_allclose(
            soft_rank(x, epsilon=2.0), [[3, 1.25, 1.75], [1.75, 1.25, 3]], rtol=1e-6
        )
        np.testing.assert_allclose(soft_rank(x, epsilon=1.0), [[3, 1, 2], [2, 1, 3]], rtol=1e-6)
        assert soft_rank(x, epsilon=1.0).dtype == dtype
    np.testing.assert_allclose(
        soft_sort(README, epsilon=1.0, descending=True), [[11 / 3, 8 / 3, 5 / 3]] * 2
    )
    np.testing.assert_allclose(
        soft_rank(README[:1], epsilon=2.0, descending=True), [[1, 2.75, 2.25]]
    )
    np.testing.assert_allclose(soft_rank(README[:1], epsilon=1.0, regularization="kl"), [[3, 1, 2]])
    np.testing.assert_allclose(
        jax.jit(core.project_permutahedron)(README[0], jnp.array([3.0, 2.0, 1.0])), [3, 1, 2]
    )


def test_l2_matches_scipy_isotonic_oracle() -> None:
    x = np.random.default_rng(0).normal(size=(4, 25))
    for eps in (0.05, 0.5, 5.0):
        ranks = soft_rank(jnp.asarray(x), epsilon=eps)
        sorts = soft_sort(jnp.asarray(x), epsilon=eps)
        for i in range(4):
            np.testing.assert_allclose(ranks[i], l2_rank_oracle(x[i], eps), atol=1e-10)
            np.testing.assert_allclose(sorts[i], l2_sort_oracle(x[i], eps), atol=1e-10)


# ------------------------------------------------------------------------- limits and properties


@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("descending", [False, True])
def test_small_epsilon_gives_hard_sort_and_rank(regularization: str, descending: bool) -> None:
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 30)))
    hard_sort = -jnp.sort(-x, axis=-1) if descending else jnp.sort(x, axis=-1)
    key = -x if descending else x
    hard_rank = (jnp.argsort(jnp.argsort(key, axis=-1), axis=-1) + 1).astype(x.dtype)
    kw = {"descending": descending, "regularization": regularization}
    np.testing.assert_allclose(soft_sort(x, epsilon=1e-4, **kw), hard_sort, atol=1e-9)
    np.testing.assert_allclose(soft_rank(x, epsilon=1e-4, **kw), hard_rank, atol=1e-9)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 24),
    log_eps=st.floats(-3.0, 2.0),
    seed=st.integers(0, 2**16),
    descending=st.booleans(),
)
def test_permutation_properties(n: int, log_eps: float, seed: int, descending: bool) -> None:
    # One padded width for every n (one compilation per flag); the padding must stay 0.
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=24))
    eps = 10.0**log_eps
    perm = rng.permutation(n)
    xp = x.at[:n].set(x[:n][perm])
    kw = {"epsilon": eps, "descending": descending, "lengths": n}
    r, rp = soft_rank(x, **kw), soft_rank(xp, **kw)
    s, sp = soft_sort(x, **kw), soft_sort(xp, **kw)
    # Ranks are equivariant and sorts invariant under permutations of the input.
    np.testing.assert_allclose(rp[:n], r[:n][perm], atol=1e-9)
    np.testing.assert_allclose(sp, s, atol=1e-9)
    # Ranks lie in P(rho): sum n(n+1)/2, within [1, n]; the sort keeps the sum (l2) and is monotone.
    np.testing.assert_allclose(float(r.sum()), n * (n + 1) / 2, rtol=1e-10)
    assert bool(jnp.all((r[:n] >= 1 - 1e-9) & (r[:n] <= n + 1e-9)))
    np.testing.assert_allclose(float(s.sum()), float(x[:n].sum()), atol=1e-9 * (1 + n / eps))
    step = np.diff(np.asarray(s[:n]))
    assert np.all(step <= 1e-9) if descending else np.all(step >= -1e-9)
    assert bool(jnp.all(r[n:] == 0))
    assert bool(jnp.all(s[n:] == 0))
    # Ranks are monotone in x.
    order = np.argsort(np.asarray(x[:n]))
    ranks = np.asarray(r[:n])[order]
    assert np.all(np.diff(ranks) <= 1e-9) if descending else np.all(np.diff(ranks) >= -1e-9)


def test_large_epsilon_pulls_to_the_mean() -> None:
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 10)))
    np.testing.assert_allclose(soft_rank(x, epsilon=1e6), 5.5, atol=1e-3)
    np.testing.assert_allclose(
        soft_sort(x, epsilon=1e6),
        jnp.broadcast_to(jnp.mean(x, -1, keepdims=True), x.shape),
        atol=1e-3,
    )


# ----------------------------------------------------------------------------------- derivatives


@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_check_grads_in_x_and_epsilon(regularization: str) -> None:
    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 7)))
    eps = jnp.array([0.3, 1.0, 2.0])
    for op in (soft_sort, soft_rank):

        def f(z: jax.Array, e: jax.Array, op=op) -> jax.Array:  # type: ignore[no-untyped-def]
            return op(z, epsilon=e, regularization=regularization)

        check_grads(f, (x, eps), order=1, modes=["fwd", "rev"])


def test_l2_jacobian_is_block_average() -> None:
    # x = [5, 1, 2], eps = 2: r = x/eps - v with v the block average of (sorted x/eps - rho). The
    # largest entry is its own block (dr = 0); the two smallest pool: dr = (I - 1 1^T / 2) / eps.
    x = README[0]
    jac = jax.jacfwd(lambda z: soft_rank(z, epsilon=2.0))(x)
    np.testing.assert_allclose(jac, [[0, 0, 0], [0, 0.25, -0.25], [0, -0.25, 0.25]])
    np.testing.assert_allclose(jax.jacrev(lambda z: soft_rank(z, epsilon=2.0))(x), jac)


@pytest.mark.parametrize("regularization", ["l2", pytest.param("kl", marks=pytest.mark.slow)])
def test_ragged_equals_unpadded_and_padding_is_inert(regularization: str) -> None:
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 9)))
    lengths = jnp.array([9, 5, 1])
    padded = x.at[1, 5:].set(jnp.nan).at[2, 1:].set(1e30)
    for op in (soft_sort, soft_rank):

        def f(z: jax.Array, op=op) -> jax.Array:  # type: ignore[no-untyped-def]
            return op(z, epsilon=0.7, regularization=regularization, lengths=lengths)

        out = f(padded)
        full = op(x, epsilon=0.7, regularization=regularization)
        np.testing.assert_allclose(out[0], full[0], rtol=1e-14, atol=1e-14)
        alone = op(x[1, :5], epsilon=0.7, regularization=regularization)
        np.testing.assert_allclose(out[1, :5], alone, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(out[2, 0], 1.0 if op is soft_rank else x[2, 0], rtol=1e-14)
        assert bool(jnp.all(out[1, 5:] == 0))
        assert bool(jnp.all(out[2, 1:] == 0))
        jac = jax.jacrev(f)(padded)
        assert bool(jnp.all(jnp.isfinite(jac)))
        assert bool(jnp.all(jac[1, :, 1, 5:] == 0))


def test_ties_and_vmap() -> None:
    x = jnp.array([[1.0, 1.0, 1.0, 0.0], [3.0, 3.0, -1.0, 2.0]])
    r = soft_rank(x, epsilon=1e-3)
    np.testing.assert_allclose(r[0], [3, 3, 3, 1], atol=1e-9)  # ties share the rank mean
    for fn in (jax.jacfwd, jax.jacrev):
        assert bool(jnp.all(jnp.isfinite(fn(lambda z: soft_rank(z, epsilon=1e-3))(x))))
    batched = jax.jit(jax.vmap(lambda z: core.soft_sort(z, epsilon=0.5)))(x)
    loop = jnp.stack([soft_sort(x[i], epsilon=0.5) for i in range(2)])
    np.testing.assert_allclose(batched, loop, atol=1e-14)


def test_no_recompilation_for_new_epsilon_or_lengths() -> None:
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 16)), jnp.float32)
    f = jax.jit(lambda z, e, ln: core.soft_rank(z, epsilon=e, lengths=ln))
    f(x, jnp.full(4, 0.5, jnp.float32), jnp.full(4, 16, jnp.int32)).block_until_ready()
    before = compilations()
    for e, ln in [(0.1, 3), (10.0, 16), (1e-3, 8)]:
        f(x, jnp.full(4, e, jnp.float32), jnp.full(4, ln, jnp.int32)).block_until_ready()
    assert compilations() == before
