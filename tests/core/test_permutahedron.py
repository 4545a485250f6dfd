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
from tests.core.oracles import soft_rank_oracle, soft_sort_oracle

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


# --------------------------------------------------------------- exact at every scale and epsilon
#
# The float results are compared with fast-soft-sort's definitions evaluated in 120-digit decimals
# (tests/core/oracles.py), which keep every float32 score and epsilon exact through the
# cancellations (x / eps - rho with |x| / eps up to 1e84) that the float code must avoid. All
# eight variants of one dtype run in one compiled call over one batch of rows.

VARIANTS = [
    (op, reg, desc) for op in ("sort", "rank") for reg in ("l2", "kl") for desc in (False, True)
]
SCALES = [1e-30, 1e-20, 1e-8, 1.0, 1e8, 1e20, 3e38]
EPSILONS = [1.4e-45, 1e-38, 1e-30, 1e-20, 1e-8, 1e-2, 1.0, 1e2, 1e8, 1e20, 1e30, 3.4e38]


@jax.jit
def all_variants(x: jax.Array, eps: jax.Array) -> dict[str, jax.Array]:
    ops = {"sort": core.soft_sort, "rank": core.soft_rank}
    return {
        f"{op} {reg} {desc}": ops[op](x, epsilon=eps, regularization=reg, descending=desc)
        for op, reg, desc in VARIANTS
    }


def sweep_rows(dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Rows at every (scale, epsilon): random, with ties, and mixed magnitudes; plus issue 12's."""
    rng = np.random.default_rng(0)
    rows, epsilons = [], []
    for a in SCALES:
        for e in EPSILONS:
            rows += [
                a * rng.normal(size=6) / 3,
                a * np.round(rng.normal(size=6)) / 3,
                np.r_[a, -a, a * 1e-8, 0.0, 1.0, -1.0],
            ]
            epsilons += [e] * 3
    rows += [
        np.r_[1e8, -1e8, 1, 0, 0, 0],
        np.r_[3e8, 1e8, 2e8, 0, 0, 0],
        np.r_[3e38, -3e38, 0, 0, 0, 0],
    ]
    rows += [np.r_[1.2e-38, 1.3e-38, 1e-39, 0, -1e-39, 1.0]]  # subnormal gaps and values
    epsilons += [0.1, 0.01, 1e-45, 1e-45]
    return np.array(rows, dtype), np.array(epsilons, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_scale_and_epsilon_matches_the_decimal_oracle(dtype: type) -> None:
    x, eps = sweep_rows(dtype)
    got = {key: np.asarray(value, np.float64) for key, value in all_variants(x, eps).items()}
    ulp = float(np.finfo(dtype).eps)
    n = x.shape[1]
    for op, reg, desc in VARIANTS:
        out = got[f"{op} {reg} {desc}"]
        assert np.all(np.isfinite(out)), (op, reg, desc)
        oracle = soft_sort_oracle if op == "sort" else soft_rank_oracle
        for i in range(len(x)):
            row = x[i].astype(np.float64)
            # Scale of the answer: max|x| for sorts, n for ranks; a few ulps of it.
            scale = np.max(np.abs(row)) if op == "sort" else n
            expected = oracle(row, float(eps[i]), desc, reg)
            np.testing.assert_allclose(
                out[i], expected, rtol=0, atol=6 * ulp * scale, err_msg=f"{op} {reg} {desc} {i}"
            )
            if op == "rank":  # in P(rho): sum n(n+1)/2, each in [1, n]
                assert abs(out[i].sum() - n * (n + 1) / 2) <= 4 * n * ulp * n
                assert np.all((out[i] >= 1) & (out[i] <= n))
            else:  # monotone, within [min x, max x]; l2 keeps the sum
                step = np.diff(out[i])
                assert np.all(step <= 0) if desc else np.all(step >= 0)
                assert np.all((out[i] >= row.min()) & (out[i] <= row.max()))
                if reg == "l2":
                    assert abs(out[i].sum() - row.sum()) <= 4 * n * ulp * scale


def test_issue_12_examples() -> None:
    # Soft sorts pool where the spread is large against 1 / epsilon (s(a x, eps) = a s(x, a eps)):
    # [1e8, -1e8, 1, 0] with epsilon = 1 is the mean 1/4 plus (rho - 5/2), summing to 1 exactly.
    x = jnp.array([1e8, -1e8, 1.0, 0.0], jnp.float32)
    np.testing.assert_allclose(soft_sort(x), [-1.25, -0.25, 0.75, 1.75], atol=8 * 1e8 * 6e-8)
    np.testing.assert_array_equal(soft_rank(x, epsilon=0.1), [4, 1, 3, 2])
    np.testing.assert_array_equal(soft_rank(x), [4, 1, 3, 2])
    np.testing.assert_array_equal(soft_sort(x, epsilon=1e-9), [-1e8, 0, 1, 1e8])  # the hard sort
    y = jnp.array([3e8, 1e8, 2e8, 0.0], jnp.float32)
    np.testing.assert_array_equal(soft_rank(y, epsilon=0.01), [4, 2, 3, 1])
    # Non-finite outputs for finite inputs: ruled out at the ends of the range.
    np.testing.assert_array_equal(soft_sort(jnp.array([3e38, -3e38], jnp.float32)), [-0.5, 0.5])
    np.testing.assert_array_equal(
        soft_sort(jnp.array([1.0, 2.0], jnp.float32), epsilon=1e-45), [1, 2]
    )
    big = jnp.array([3e38, -3e38], jnp.float32)
    np.testing.assert_array_equal(soft_sort(big, epsilon=1e-45), -jnp.sort(-big)[::-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vanishing_epsilon_gives_the_hard_sort_and_ranks_at_every_scale(dtype: type) -> None:
    rng = np.random.default_rng(7)
    x = np.concatenate([a * rng.normal(size=(2, 6)) / 4 for a in SCALES]).astype(dtype)
    x[:, 5] = x[:, 4]  # a tie: hard ranks share their mean
    eps = np.full(len(x), np.finfo(dtype).smallest_subnormal, dtype)
    got = all_variants(x, eps)
    for desc in (False, True):
        key = -x if desc else x
        order = np.argsort(key, axis=-1, kind="stable")
        ranks = np.argsort(order, axis=-1) + 1.0
        ranks[:, 4:] = ranks[:, 4:].mean(axis=-1, keepdims=True)  # the tie
        hard_sort = np.take_along_axis(x, order, axis=-1)
        for reg in ("l2", "kl"):
            np.testing.assert_array_equal(got[f"sort {reg} {desc}"], hard_sort)
            np.testing.assert_array_equal(got[f"rank {reg} {desc}"], ranks)


@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_derivatives_match_finite_differences_at_extreme_scales(regularization: str) -> None:
    # float64 rows at 1e-30 and 1e30 with epsilons that keep both operators soft there.
    rng = np.random.default_rng(11)
    base = rng.normal(size=(2, 5))
    x = np.concatenate([base * 1e-30, base * 1e30])
    sort_eps = np.array([1e30, 1e30, 1e-30, 1e-30])
    rank_eps = np.array([1e-30, 1e-30, 1e30, 1e30])
    t = rng.normal(size=x.shape)
    u = rng.normal(size=x.shape)

    @jax.jit
    def derivatives(x, t, u, h):  # type: ignore[no-untyped-def]
        out = {}
        for name, op, eps in (
            ("sort", core.soft_sort, sort_eps),
            ("rank", core.soft_rank, rank_eps),
        ):

            def f(z, op=op, eps=eps):  # type: ignore[no-untyped-def]
                return op(z, epsilon=eps, regularization=regularization)

            _, jvp = jax.jvp(f, (x,), (t,))
            _, pullback = jax.vjp(f, x)
            out[name] = (jvp, pullback(u)[0], (f(x + h * t) - f(x - h * t)) / (2 * h))
        return out

    scale = np.abs(x).max(axis=-1, keepdims=True)
    for name, (jvp, vjp, fd) in derivatives(x, t * scale, u, 1e-6).items():
        jvp, vjp, fd = (np.asarray(a) for a in (jvp, vjp, fd))
        assert np.all(np.isfinite(jvp)) and np.all(np.isfinite(vjp))
        np.testing.assert_allclose(jvp, fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max(), err_msg=name)
        # Reverse mode is the transpose of forward mode: <u, J t> = <J^T u, t> row by row.
        np.testing.assert_allclose(
            np.sum(u * jvp, axis=-1), np.sum(vjp * t * scale, axis=-1), rtol=1e-10, atol=1e-300
        )


@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_rank_derivatives_in_float32_match_float64_under_jit(regularization: str) -> None:
    """Reverse mode under jit, rows of 1024 with per-row epsilons 1e-6 and 10: float32 within
    1e-4 of each row's largest derivative (float64 at the same inputs). The kl VJP was ~100 where
    the answer is ~1e-7: it scaled the cotangent by ranks / epsilon before cancelling two equal
    terms (singletons), one of which XLA could contract into an FMA."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1024)).astype(np.float32)
    eps = rng.choice([1e-6, 10.0], size=(16,)).astype(np.float32)
    cotangent = rng.normal(size=x.shape).astype(np.float32)
    for descending in (False, True):

        def derivatives(v: jax.Array, c: jax.Array, d: bool = descending) -> tuple[jax.Array, ...]:
            def rank(u: jax.Array) -> jax.Array:
                e = eps.astype(u.dtype)
                return core.soft_rank(u, epsilon=e, regularization=regularization, descending=d)

            return jax.vjp(rank, v)[1](c)[0], jax.jvp(rank, (v,), (c,))[1]

        got = jax.jit(derivatives)(x, cotangent)
        want = jax.jit(derivatives)(x.astype(np.float64), cotangent.astype(np.float64))
        for g, w in zip(got, want, strict=True):
            g, w = np.asarray(g, np.float64), np.asarray(w)
            bound = 1e-4 * np.abs(w).max(axis=1, keepdims=True) + 1e-6
            assert np.all(np.abs(g - w) <= bound), np.abs(g - w).max()
