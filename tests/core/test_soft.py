"""SOFT top-k (entropic OT): oracles (NumPy Sinkhorn, ott-jax, the official demo), derivatives,
rows, padding, compilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import core
from tests.compile_counter import compilations
from tests.core import oracles
from tests.core.sweep import max_error_in_ulps, sweep_rows

# Jitted once per shape: eager dispatch of the solvers' loops would dominate the test time.
soft_mask = jax.jit(
    core.soft_topk_mask,
    static_argnames=("rescale_cost", "solver", "max_iter", "tol", "return_info"),
)
soft_sorted = jax.jit(
    core.soft_topk_sorted, static_argnames=("k", "rescale_cost", "max_iter", "tol")
)

# ------------------------------------------------------------------- independent float64 oracle


def sinkhorn_oracle(
    x: np.ndarray, anchors: np.ndarray, nu: np.ndarray, eps: float, tol: float = 1e-14
) -> np.ndarray:
    """Entropic OT plan of one row (mu = 1/n) onto ``anchors`` with cost (x_i - a_j)^2, log domain.

    Written from the problem statement only: f_i = eps log mu_i - eps LSE_j((g_j - C_ij)/eps), and
    the same for g; stops when the row marginal error is below ``tol``.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    cost = (x[:, None] - anchors[None, :]) ** 2
    log_mu, log_nu = np.full(n, -np.log(n)), np.log(nu)
    f, g = np.zeros(n), np.zeros(len(anchors))

    def lse(a: np.ndarray, axis: int) -> np.ndarray:
        top = a.max(axis=axis, keepdims=True)
        return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)

    for _ in range(200_000):
        f = eps * log_mu - eps * lse((g[None, :] - cost) / eps, axis=1)
        g = eps * log_nu - eps * lse((f[:, None] - cost) / eps, axis=0)
        plan = np.exp((f[:, None] + g[None, :] - cost) / eps)
        if np.abs(plan.sum(axis=1) - 1 / n).sum() < tol:
            break
    return plan


def mask_oracle(x: np.ndarray, k: int, eps: float) -> np.ndarray:
    n = len(x)
    plan = sinkhorn_oracle(x, np.array([0.0, 1.0]), np.array([(n - k) / n, k / n]), eps)
    return n * plan[:, 1]


def sorted_oracle(x: np.ndarray, k: int, eps: float) -> np.ndarray:
    n = len(x)
    anchors = np.arange(k, -1, -1, dtype=np.float64)
    nu = np.r_[np.full(k, 1 / n), (n - k) / n]
    return (n * sinkhorn_oracle(x, anchors, nu, eps)[:, :k]).T


def rows(shape: tuple[int, ...], seed: int = 0, dtype: type = np.float64) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


# ------------------------------------------------------------------------------------- oracles


def test_official_demo_after_negation() -> None:
    # Official TopK_custom(k=3, epsilon=0.05) on [5,2,3,4,1,6] selects the smallest, with the cost
    # divided by its max (36). Reflecting x -> 1 - x swaps the anchors and keeps the cost matrix.
    x = np.array([5.0, 2, 3, 4, 1, 6])
    official = np.array([0.159, 0.841, 0.635, 0.365, 0.941, 0.059])
    for dtype in (jnp.float32, jnp.float64):
        got = soft_mask(jnp.asarray(1 - x, dtype), 3, epsilon=0.05, rescale_cost=True)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, official, atol=5e-4)
    # Without the rescaling the same mask is eps = 0.05 * 36 on -x (shift invariance).
    got = soft_mask(jnp.asarray(-x), 3, epsilon=1.8)
    np.testing.assert_allclose(got, mask_oracle(-x, 3, 1.8), atol=1e-12)


@pytest.mark.parametrize(
    ("n", "k", "eps"), [(9, 3, 0.5), (20, 1, 0.2), (20, 19, 1.0), (50, 7, 0.1)]
)
def test_mask_matches_numpy_sinkhorn(n: int, k: int, eps: float) -> None:
    x = np.random.default_rng(n + k).normal(size=n)
    got = soft_mask(jnp.asarray(x), k, epsilon=eps)
    np.testing.assert_allclose(got, mask_oracle(x, k, eps), atol=1e-10)


def _ott_topk_mask(x: jax.Array, k: int, eps: float) -> jax.Array:
    soft_sort = pytest.importorskip("ott.tools.soft_sort")
    return soft_sort.topk_mask(
        x, k=k, squashing_fun=lambda z: z, epsilon=eps, threshold=1e-13, max_iterations=100_000
    )


def test_mask_matches_ott_topk_mask() -> None:
    x = rows((4, 40), seed=1)
    np.testing.assert_allclose(soft_mask(x, 5, epsilon=0.3), _ott_topk_mask(x, 5, 0.3), atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1.0, 0.3, 0.1])
@pytest.mark.parametrize("k", [1, 5, 20, 39])
def test_mask_matches_ott_topk_mask_grid(k: int, eps: float) -> None:
    x = rows((4, 40), seed=1)
    np.testing.assert_allclose(soft_mask(x, k, epsilon=eps), _ott_topk_mask(x, k, eps), atol=1e-9)


def test_newton_and_sinkhorn_solvers_agree() -> None:
    x = rows((6, 30), seed=2)
    k = jnp.array([0, 1, 4, 15, 29, 30])
    newton, info = soft_mask(x, k, epsilon=0.3, return_info=True)
    sink, sinfo = soft_mask(x, k, epsilon=0.3, solver="sinkhorn", return_info=True)
    np.testing.assert_allclose(newton, sink, atol=1e-10)
    assert bool(jnp.all(info.converged))
    assert bool(jnp.all(sinfo.converged))
    assert int(jnp.max(info.iterations)) <= 12
    assert float(jnp.max(info.error)) < 1e-13


# The sorted variant compiles slowly (Sinkhorn + a batched linear solve): every fast test calls it
# with one signature -- a (2, 12) float64 batch, k = 3, per-row epsilon and lengths -- so that
# the executable (and its JVP / transpose) is compiled once for the whole file.
SORTED_X = rows((2, 12), seed=3)


def sorted3(x: jax.Array, eps: jax.Array, lengths: jax.Array) -> core.SoftTopkSorted:
    return soft_sorted(x, 3, epsilon=eps, lengths=lengths, tol=1e-13, max_iter=100_000)


def test_sorted_matches_numpy_sinkhorn() -> None:
    x = np.asarray(SORTED_X)
    out = sorted3(SORTED_X, jnp.array([0.5, 1.0]), jnp.array([12, 7]))
    assert bool(jnp.all(out.info.converged))
    for i, (length, eps) in enumerate([(12, 0.5), (7, 1.0)]):
        want = sorted_oracle(x[i, :length], 3, eps)
        np.testing.assert_allclose(out.assignment[i, :, :length], want, atol=1e-9)
        np.testing.assert_allclose(out.values[i], want @ x[i, :length], atol=1e-9)
        assert bool(jnp.all(out.assignment[i, :, length:] == 0))
    # Largest first: the values decrease and the first row peaks at the argmax.
    assert bool(jnp.all(jnp.diff(out.values, axis=-1) < 0))
    assert int(jnp.argmax(out.assignment[0, 0])) == int(jnp.argmax(SORTED_X[0]))


@pytest.mark.slow
def test_sorted_matches_ott_sort_topk() -> None:
    soft_sort = pytest.importorskip("ott.tools.soft_sort")
    # ott places k+1 targets on linspace(0, 1, k+1) (spacing 1/k): the same problem with x * k.
    x = rows((12,), seed=4)
    k, eps = 3, 0.05
    ott = soft_sort.sort(
        x,
        topk=k,
        squashing_fun=lambda z: z,
        epsilon=eps,
        threshold=1e-13,
        max_iterations=100_000,
    )
    out = soft_sorted(x * k, k, epsilon=eps * k * k, tol=1e-13, max_iter=100_000)
    np.testing.assert_allclose(out.values[::-1] / k, ott, atol=1e-8)


# ------------------------------------------------------------------------------- derivatives


def central_jvp(f, x: jax.Array, v: jax.Array, h: float = 1e-6) -> jax.Array:  # type: ignore[no-untyped-def]
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


@pytest.mark.parametrize("rescale", [False, True])
def test_mask_jvp_vjp_match_finite_differences(rescale: bool) -> None:
    x = rows((3, 10), seed=5)
    k = jnp.array([1, 3, 7])
    eps = jnp.array([0.2, 0.5, 1.0])

    def f(z: jax.Array) -> jax.Array:
        return soft_mask(z, k, epsilon=eps, rescale_cost=rescale)

    v = rows((3, 10), seed=6)
    _, jvp = jax.jvp(f, (x,), (v,))
    np.testing.assert_allclose(jvp, central_jvp(f, x, v), atol=1e-7)
    u = rows((3, 10), seed=7)
    (vjp,) = jax.vjp(f, x)[1](u)
    np.testing.assert_allclose(jnp.vdot(vjp, v), jnp.vdot(u, jvp), rtol=1e-10)
    # Sum is fixed at k: the JVP sums to zero on every row.
    np.testing.assert_allclose(jvp.sum(-1), 0, atol=1e-12)


@pytest.mark.parametrize("order", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_mask_check_grads_in_x_and_epsilon(order: int) -> None:
    x = rows((3, 8), seed=8)

    def f(z: jax.Array, e: jax.Array) -> jax.Array:
        return soft_mask(z, jnp.array([2, 4, 7]), epsilon=e, rescale_cost=True)

    check_grads(f, (x, jnp.array([0.3, 0.5, 1.0])), order=order, modes=["fwd", "rev"])


def test_sorted_check_grads_and_finite_differences() -> None:
    lengths = jnp.array([12, 5])

    def f(z: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = sorted3(z, e, lengths)
        return out.values, out.assignment

    eps = jnp.array([0.5, 1.0])
    check_grads(f, (SORTED_X, eps), order=1, modes=["fwd", "rev"])
    v = rows((2, 12), seed=10)
    _, (_, jvp) = jax.jvp(f, (SORTED_X, eps), (v, jnp.zeros(2)))
    want = central_jvp(lambda z: f(z, eps)[1], SORTED_X, v)
    np.testing.assert_allclose(jvp, want, atol=1e-7)


def test_derivatives_finite_at_edges() -> None:
    # Ties, k = 0, k = n, tiny epsilon, saturated rows: no NaN/inf anywhere, forward or reverse.
    x = jnp.array([[0.0, 0.0, -5.0, 5.0], [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]] * 2)
    k = jnp.array([2, 0, 4, 1, 3, 2])
    for eps in (1e-12, 1e-3, 1.0):

        def f(z: jax.Array, eps: float = eps) -> jax.Array:
            return soft_mask(z, k, epsilon=eps)

        out = f(x)
        assert bool(jnp.all(jnp.isfinite(out)))
        np.testing.assert_allclose(out.sum(-1), k, atol=1e-9)
        for jac in (jax.jacfwd(f)(x), jax.jacrev(f)(x)):
            assert bool(jnp.all(jnp.isfinite(jac)))
    # Ties share the mass.
    np.testing.assert_allclose(soft_mask(x[:1], 2, epsilon=1e-6), [[0.5, 0.5, 0, 1]])


def test_minus_infinity_scores_are_never_selected_before_finite_ones() -> None:
    # Masked logits: -inf is replaced by min - max(max - min, 1) of the finite entries (as the
    # official code does), so it gets (almost) no mass, a zero derivative, and no NaN appears.
    inf = jnp.inf
    x = jnp.array([[0.0, -inf, -5.0, 5.0], [1.0, 2.0, -inf, -inf], [-inf, -inf, -inf, 1.0]] * 2)
    k = jnp.array([2, 0, 4, 1, 3, 2])
    out = soft_mask(x, k, epsilon=1e-3)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out.sum(-1), k, atol=1e-9)
    np.testing.assert_allclose(out[0], [1, 0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(out[4], [1, 1, 0.5, 0.5], atol=1e-9)
    jac = jax.jacrev(lambda z: soft_mask(z, k, epsilon=1e-3))(x)
    assert bool(jnp.all(jnp.isfinite(jac)))
    assert bool(jnp.all(jac[:, :, 0, 1] == 0))


# -------------------------------------------------------------------------- limits, invariants


def test_small_epsilon_tends_to_hard_mask() -> None:
    x = rows((16, 50), seed=11)
    k = jnp.arange(16) * 3
    hard = core.hard_topk_mask(x, k)
    errors = [
        float(jnp.max(jnp.abs(soft_mask(x, k, epsilon=e) - hard))) for e in (1e-2, 1e-4, 1e-6)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    k_frac=st.floats(0.0, 1.0),
    log_eps=st.floats(-4.0, 1.0),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 100.0),
)
def test_sum_is_k_and_entries_in_unit_interval(
    n: int, k_frac: float, log_eps: float, seed: int, scale: float
) -> None:
    # One padded width (40) for every n: one compilation, and the padding is exercised too.
    k = round(k_frac * n)
    x = scale * rows((40,), seed=seed)
    mask, info = soft_mask(x, k, epsilon=10.0**log_eps, lengths=n, return_info=True)
    assert bool(info.converged)
    assert bool(jnp.all((mask >= 0) & (mask <= 1)))
    assert bool(jnp.all(mask[n:] == 0))
    np.testing.assert_allclose(float(mask.sum()), k, atol=1e-9 * n)
    # Monotone in x: larger scores get larger mask values.
    order = np.argsort(np.asarray(x[:n]))
    assert np.all(np.diff(np.asarray(mask[:n])[order]) >= -1e-12)


def test_rows_are_independent_and_shift_invariant() -> None:
    x = rows((5, 20), seed=12)
    k = jnp.array([1, 3, 5, 10, 19])
    for rescale in (False, True):
        batch = soft_mask(x, k, epsilon=0.5, rescale_cost=rescale)
        scaled = x.at[0].multiply(1000.0)  # must not change rows 1..4 (the official quirk)
        other = soft_mask(scaled, k, epsilon=0.5, rescale_cost=rescale)
        np.testing.assert_array_equal(batch[1:], other[1:])
        for i in range(5):
            single = soft_mask(x[i], k[i], epsilon=0.5, rescale_cost=rescale)
            np.testing.assert_allclose(batch[i], single, atol=1e-14)
    shifted = soft_mask(x + 7.5, k, epsilon=0.5)
    np.testing.assert_allclose(shifted, soft_mask(x, k, epsilon=0.5), atol=1e-12)


def test_vmap_and_batch_equal_loop() -> None:
    x = rows((4, 3, 16), seed=13)
    k = jnp.array([[1, 2, 3], [4, 5, 6], [0, 8, 16], [2, 2, 2]])
    eps = jnp.linspace(0.1, 1.0, 12).reshape(4, 3)

    def f(z: jax.Array, kk: jax.Array, e: jax.Array) -> jax.Array:
        return soft_mask(z, kk, epsilon=e)

    batched = jax.vmap(f)(x, k, eps)
    loop = jnp.stack([f(x[i], k[i], eps[i]) for i in range(4)])
    np.testing.assert_allclose(batched, loop, atol=1e-14)
    np.testing.assert_allclose(f(x, k, eps), loop, atol=1e-14)


def test_ragged_rows_equal_unpadded_rows() -> None:
    x = rows((3, 12), seed=14)
    lengths = jnp.array([12, 7, 3])
    k = jnp.array([4, 2, 1])
    padded = x.at[1, 7:].set(jnp.nan).at[2, 3:].set(1e30)  # the padding's content never leaks

    def f(z: jax.Array) -> jax.Array:
        return soft_mask(z, k, epsilon=0.3, lengths=lengths, rescale_cost=True)

    out = f(padded)
    for i, length in enumerate([12, 7, 3]):
        alone = soft_mask(x[i, :length], k[i], epsilon=0.3, rescale_cost=True)
        # Same values up to the summation order of XLA's row reductions (an ulp or so).
        np.testing.assert_allclose(out[i, :length], alone, rtol=1e-14, atol=1e-15)
        assert bool(jnp.all(out[i, length:] == 0))
    jac = jax.jacrev(f)(padded)
    assert bool(jnp.all(jnp.isfinite(jac)))
    assert bool(jnp.all(jac[1, :, 1, 7:] == 0))
    assert bool(jnp.all(jac[1, 7:] == 0))


@pytest.mark.slow
def test_sorted_ragged_rows_equal_unpadded_rows() -> None:
    x = rows((3, 12), seed=14)
    lengths = jnp.array([12, 7, 3])
    padded = x.at[1, 7:].set(jnp.nan).at[2, 3:].set(1e30)
    sorted_out = soft_sorted(padded, 2, epsilon=0.5, lengths=lengths, tol=1e-13)
    for i, length in enumerate([12, 7, 3]):
        alone = soft_sorted(x[i, :length], 2, epsilon=0.5, tol=1e-13)
        np.testing.assert_allclose(sorted_out.values[i], alone.values, atol=1e-12)
        np.testing.assert_allclose(
            sorted_out.assignment[i, :, :length], alone.assignment, atol=1e-12
        )
        assert bool(jnp.all(sorted_out.assignment[i, :, length:] == 0))


def test_sorted_short_rows_are_finite_and_padded() -> None:
    # A row shorter than k: the extra sorted slots are empty (zero rows); derivatives stay finite.
    lengths = jnp.array([12, 2])
    eps = jnp.array([0.5, 0.5])
    out = sorted3(SORTED_X, eps, lengths)
    assert bool(jnp.all(out.assignment[1, 2] == 0))
    np.testing.assert_allclose(out.assignment[1].sum(-1), [1, 1, 0], atol=1e-10)
    jac = jax.jacrev(lambda z: sorted3(z, eps, lengths).values)(SORTED_X)
    assert bool(jnp.all(jnp.isfinite(jac)))


def test_float32_close_to_float64() -> None:
    x = rows((8, 300), seed=15)
    k = jnp.arange(8) * 37
    for eps in (1.0, 0.1, 0.01):
        m64 = soft_mask(x, k, epsilon=eps)
        m32, info = soft_mask(x.astype(jnp.float32), k, epsilon=eps, return_info=True)
        assert m32.dtype == jnp.float32
        assert bool(jnp.all(info.converged))
        np.testing.assert_allclose(m32, m64, atol=2e-5 / eps)
        np.testing.assert_allclose(m32.sum(-1), k, rtol=1e-5, atol=1e-4)
    eps2, lengths2 = jnp.array([0.5, 1.0]), jnp.array([12, 7])
    s64 = sorted3(SORTED_X, eps2, lengths2)
    s32 = soft_sorted(SORTED_X.astype(jnp.float32), 3, epsilon=eps2, lengths=lengths2)
    assert s32.values.dtype == jnp.float32
    assert bool(jnp.all(s32.info.converged))
    np.testing.assert_allclose(s32.values, s64.values, atol=1e-4)


def test_no_recompilation_for_new_k_epsilon_or_lengths() -> None:
    f = jax.jit(
        lambda z, kk, e, ln: jax.jvp(lambda y: soft_mask(y, kk, epsilon=e, lengths=ln), (z,), (z,))
    )
    x = rows((8, 32), seed=16, dtype=np.float32)

    def call(k: int, e: float, length: int) -> None:
        jax.block_until_ready(
            f(
                x,
                jnp.full(8, k, jnp.int32),
                jnp.full(8, e, jnp.float32),
                jnp.full(8, length, jnp.int32),
            )
        )

    call(2, 0.1, 32)
    before = compilations()
    for k, e, length in [(5, 0.5, 20), (1, 1e-3, 32), (7, 3.0, 9), (0, 0.2, 32)]:
        call(k, e, length)
    assert compilations() == before


# --------------------------------------------------------------- exact at every scale and epsilon


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_is_exact_at_every_scale_and_epsilon(dtype: type) -> None:
    # Oracle: exact rational scores measured from the k-th largest, offset bisected on the
    # log-domain tail balance (tests/core/oracles.py). The old code clamped epsilon at sqrt(tiny)
    # and measured scores from the row's max (NaN for [3e38, -3e38, 1, 0]; 40-ulp tails).
    x, eps = sweep_rows(dtype)
    ks = np.array([2, 1, 3] * len(x))[: len(x)]
    got = np.asarray(soft_mask(x, ks, epsilon=eps), np.float64)
    for i in range(len(x)):
        want = oracles.soft_mask_oracle(x[i].astype(np.float64), int(ks[i]), float(eps[i]))
        # Rows near 1e-30 in float32: differences of entries are a few multiples of the smallest
        # normal there, so the scores' gaps carry fewer bits (measured: up to 9.4 ulps).
        tiny_row = dtype is np.float32 and float(np.abs(x[i]).max()) < 1e-29
        bound = 16 if tiny_row else 8
        assert max_error_in_ulps(got[i], want, 1.0, dtype) <= bound, (i, x[i], eps[i], got[i])


def test_issue_12_soft_examples() -> None:
    x = jnp.array([3e38, -3e38, 1.0, 0.0], jnp.float32)
    got = soft_mask(x, 2)
    np.testing.assert_allclose(got, oracles.soft_mask_oracle(np.asarray(x), 2, 0.1), atol=1e-7)
    # Vanishing epsilon (also subnormal, which the device reads as 0) gives the hard mask.
    y = jnp.array([0.3, 0.1, 0.25, -0.4, 0.2], jnp.float32)
    for eps in (1e-45, 1e-38, 1e-20):
        np.testing.assert_array_equal(soft_mask(y, 2, epsilon=eps), [1, 0, 1, 0, 0])
    # A sorted variant: no epsilon floor any more, finite at the ends of the range.
    out = soft_sorted(jnp.array([3e38, -3e38, 1.0, 0.0], jnp.float32), k=2, epsilon=1e-45)
    assert bool(jnp.all(jnp.isfinite(out.values)))


def test_mask_derivatives_match_finite_differences_at_extreme_scales() -> None:
    rng = np.random.default_rng(31)
    base = rng.normal(size=(2, 7))
    x = np.concatenate([base * 1e-30, base * 1e30])
    scale = np.abs(x).max(axis=-1)
    eps = 0.5 * scale
    t = rng.normal(size=x.shape) * scale[:, None]
    u = rng.normal(size=x.shape)

    @jax.jit
    def derivatives(x, t, u, h):  # type: ignore[no-untyped-def]
        def f(z):  # type: ignore[no-untyped-def]
            return core.soft_topk_mask(z, 3, epsilon=eps)

        _, jvp = jax.jvp(f, (x,), (t,))
        vjp = jax.vjp(f, x)[1](u)[0]
        return jvp, vjp, (f(x + h * t) - f(x - h * t)) / (2 * h)

    jvp, vjp, fd = (np.asarray(a) for a in derivatives(x, t, u, 1e-6))
    np.testing.assert_allclose(jvp, fd, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.sum(u * jvp, -1), np.sum(vjp * t, -1), rtol=1e-10, atol=1e-12)
