"""The small-k threshold (core._candidates) against independent oracles, on both candidate sources.

``mask_threshold`` is run with ``source="chain"`` (the CPU path) and ``source="top_k"`` (the
accelerator path, forced here on the CPU). A general solver that returns NaN shows which rows the
candidates settle by themselves; the public operator (the default path) is exact on every row.
Oracles: the float64 PAV of tests/core/oracles.py and a float64 NumPy bisection of the threshold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import core
from core import _candidates
from core._rows import valid_entries
from core._sparse import _mask_from_parts, _mask_parts
from core._threshold import exponent
from core._units import mask_units
from tests.core import oracles

ROWS, N = 48, 24
SOURCES = ["chain", "top_k"]


def no_solver(x, valid, k, eps):
    return jnp.full(k.shape, jnp.nan, x.dtype)


def threshold_and_mask(x, k, eps, lengths, p, source, solve=no_solver):
    """``tau`` of the candidates (NaN where they fall back) and the mask from it, in the public
    operator's units (``mask_units``) and through its output step (as core._sparse does)."""
    r = exponent(p)

    @jax.jit
    def run(x, k, eps, lengths):
        valid = valid_entries(x, lengths)
        x, eps = mask_units(x, eps, valid)
        shift, tau = _candidates.mask_threshold(x, valid, k, eps, r, solve, source)
        shifted = jnp.where(shift[:, None] != 0, x - shift[:, None], x)
        return tau, _mask_from_parts(*_mask_parts(shifted, tau, k, eps, valid, r), k, r)

    return run(jnp.asarray(x), jnp.asarray(k, jnp.int32), jnp.asarray(eps), jnp.asarray(lengths))


def hard_batch(seed: int):
    """Random rows plus the cases that must be exact: ties at c_k, c_(k+1) and at the K-th and
    (K+1)-th values, all-equal rows, wide eps (support > K), huge |x|/eps, ragged lengths."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, N))
    k = rng.integers(1, 9, size=ROWS)
    eps = 10 ** rng.uniform(-2, 0, size=ROWS)
    lengths = np.full(ROWS, N)
    order = np.argsort(-x, axis=1)
    for i in range(0, ROWS, 6):  # tie at the k-th / (k+1)-th value
        x[i, order[i, k[i]]] = x[i, order[i, k[i] - 1]]
    for i in range(1, ROWS, 6):  # tie at the 16th / 17th value (the candidate boundary)
        x[i, order[i, 16]] = x[i, order[i, 15]]
        eps[i] = 3.0
    x[2] = 0.7  # all equal: y = k / n, support n > K
    x[3, :5] = 5.0  # five equal leaders, k among them
    k[3] = 3
    eps[4] = 50.0  # support = the whole row
    x[5] = 1e6 + rng.normal(size=N) * 1e-2  # |x| / eps ~ 1e8
    eps[5] = 1e-2
    lengths[6::6] = rng.integers(1, N, size=len(lengths[6::6]))  # ragged rows
    x[6::6] = np.where(np.arange(N) < lengths[6::6, None], x[6::6], 1e3)  # junk padding
    k = np.minimum(k, lengths)
    return x, k, eps, lengths


def oracle(x, k, eps, lengths, p):
    out = np.zeros_like(x)
    for i in range(len(x)):
        n = lengths[i]
        row = x[i, :n] - np.max(x[i, :n])  # the mask is shift-invariant; the oracle is not exact
        out[i, :n] = oracles.pav_mask(row, k[i], eps[i], p)  # far from 0 (1e-8 at |x| = 1e6)
    return out


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("p", [2.0, 4 / 3])
def test_exact_against_pav_on_hard_rows(source, p):
    x, k, eps, lengths = hard_batch(seed=int(10 * p))
    expected = oracle(x, k, eps, lengths, p)
    # Without a general solver (NaN): the rows the candidates settle are exact, and exactly the
    # rows whose support fits (without repeats above tau, for the chain) are settled.
    tau, y = threshold_and_mask(x, k, eps, lengths, p, source)
    fell_back = np.isnan(np.asarray(tau))
    np.testing.assert_allclose(np.asarray(y)[~fell_back], expected[~fell_back], atol=1e-8)
    np.testing.assert_allclose(np.sum(y, axis=-1)[~fell_back], k[~fell_back], atol=1e-9)
    support = np.sum(expected > 1e-12, axis=-1)  # the oracle leaves 1e-16 for some zeros
    for i in range(ROWS):
        row = x[i, : lengths[i]]
        above = row[row >= np.min(row[expected[i, : lengths[i]] > 1e-12])]
        repeats = len(np.unique(above)) < len(above)
        settles = support[i] <= _candidates.CANDIDATES - 1 and not (source == "chain" and repeats)
        if settles:
            assert not fell_back[i], i
        if support[i] > _candidates.CANDIDATES:
            assert fell_back[i], i
    assert fell_back[2] and fell_back[4]  # support n > K
    assert not fell_back[5]  # huge |x| / eps is solved on the candidates
    assert fell_back[3] == (source == "chain")  # repeats are values like any other for top_k


@pytest.mark.parametrize("source", SOURCES)
def test_huge_ratio_of_scores_to_eps(source):
    # |x| / eps = 1e8: x on a grid that float32 represents exactly (ulp at 1e6 is 1/16).
    rng = np.random.default_rng(3)
    grid = rng.integers(-40, 40, size=(ROWS, N)) + (np.arange(N) % 3 == 0)  # few repeats
    x = 1e6 + grid / 16
    k = rng.integers(1, 6, size=ROWS)
    eps = 1e-2 * rng.integers(1, 20, size=ROWS)
    lengths = np.full(ROWS, N)
    expected = oracle(x, k, eps, lengths, 4 / 3)
    tau, y = threshold_and_mask(x, k, eps, lengths, 4 / 3, source)
    settled = ~np.isnan(np.asarray(tau))
    assert np.mean(settled) > 0.5
    np.testing.assert_allclose(np.asarray(y)[settled], expected[settled], atol=1e-8)
    # float32: the threshold lands on the grid of |x| (ulp 1/16 > eps), where the output step
    # loses what the exact PAV solver loses too; never more than that.
    x32, eps32 = x.astype(np.float32), eps.astype(np.float32)
    tau, y = threshold_and_mask(x32, k, eps32, lengths, 4 / 3, source)
    pav = core.sparse_topk_mask(x32, k, epsilon=eps32, solver="pav")
    error = np.abs(np.asarray(y, np.float64) - expected).max(axis=-1)
    pav_error = np.abs(np.asarray(pav, np.float64) - expected).max(axis=-1)
    settled = ~np.isnan(np.asarray(tau))
    assert np.all(error[settled] <= pav_error[settled] + 2e-5)


SCALES = [1e-30, 1e-12, 1.0, 1e12, 1e30, 3e38]


def scale_batch(dtype):
    """Rows of 20 scores at every scale of :data:`SCALES` (the largest score at the scale), with
    eps from 0.01 to 3 times it (at most the largest float); k = 1..8, ties at the k-th value, all-equal and ragged rows."""
    rng = np.random.default_rng(21)
    base = rng.normal(size=(8, 20))
    base /= np.abs(base).max(axis=-1, keepdims=True)
    ks = np.array([1, 2, 3, 5, 8, 2, 4, 1])
    order = np.argsort(-base, axis=1)
    base[1, order[1, 2]] = base[
        1, order[1, 1]
    ]  # tie at the k-th / (k+1)-th value (k = 2): repeats for the chain
    base[6, order[6, :6]] = base[6, order[6, 0]]  # six tied leaders, k = 4 among them
    base[7] = 0.5  # all equal
    lengths = np.array([20, 20, 20, 20, 20, 20, 20, 13])
    rel_eps = [0.01, 0.1, 1.0, 3.0]
    x, k, eps, ln, unit = [], [], [], [], []
    for scale in SCALES:
        for e in rel_eps:
            x.append(base * scale)
            k.append(ks)
            eps.append(np.full(8, min(e * scale, float(np.finfo(dtype).max))))
            ln.append(lengths)
            unit.append(eps[-1] / scale)
    cast = np.dtype(dtype).type
    return (
        np.concatenate(x).astype(dtype),
        np.concatenate(k),
        np.concatenate(eps).astype(dtype),
        np.concatenate(ln),
        np.concatenate(unit).astype(dtype),
        base,
        cast,
    )


@pytest.mark.parametrize(
    ("dtype", "p"),
    [
        (np.float32, 4 / 3),
        pytest.param(np.float64, 4 / 3, marks=pytest.mark.slow),
        pytest.param(np.float32, 2.0, marks=pytest.mark.slow),
        pytest.param(np.float64, 2.0, marks=pytest.mark.slow),
    ],
)
def test_every_scale_and_epsilon_against_a_float64_bisection(dtype, p):
    x, k, eps, lengths, unit, base, _ = scale_batch(dtype)
    rows = len(x)
    # The mask is homogeneous: mask(c x, c eps) = mask(x, eps), so one float64 bisection per row
    # of the unit-scale scores (as rounded to dtype at that scale) is the oracle at every scale.
    expected = np.zeros((rows, x.shape[1]))
    for i in range(rows):
        n = lengths[i]
        row = x[i, :n].astype(np.float64)
        scale = np.abs(row).max()
        expected[i, :n] = oracles.bisection_mask(row / scale, k[i], eps[i] / scale, p)
    got = core.sparse_topk_mask(x, k, epsilon=eps, p=p, lengths=lengths)
    atol = 2e-5 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=atol)
    np.testing.assert_allclose(np.sum(np.asarray(got, np.float64), axis=-1), k, atol=atol * 8)
    # The small-eps rows (support <= K) are the candidates' own, at every scale, on both sources.
    for source in SOURCES:
        tau, y = threshold_and_mask(x, k, eps, lengths, p, source)
        settled = ~np.isnan(np.asarray(tau))
        small_eps = unit <= 0.1
        distinct = (
            np.ones(rows, bool) if source == "top_k" else ~np.isin(np.arange(rows) % 8, (1, 6))
        )
        assert np.all(settled[small_eps & (np.arange(rows) % 8 != 7) & distinct]), source
        np.testing.assert_allclose(np.asarray(y, np.float64)[settled], expected[settled], atol=atol)


@pytest.mark.parametrize("p", [pytest.param(2.0, marks=pytest.mark.slow), 4 / 3])
def test_public_mask_small_k_float32_and_float64(p):
    x, k, eps, lengths = hard_batch(seed=7)
    expected = oracle(x, k, eps, lengths, p)
    y64 = core.sparse_topk_mask(x, k, epsilon=eps, p=p, lengths=lengths)
    np.testing.assert_allclose(y64, expected, atol=1e-8)
    # float32 against the oracle of the float32 inputs: at |x| ~ 1e6 (row 5) rounding x to float32
    # moves it by up to 1/32, more than eps = 1e-2, so the float64 answer is another problem's.
    x32, eps32 = x.astype(np.float32), eps.astype(np.float32)
    expected32 = oracle(x32.astype(np.float64), k, eps32.astype(np.float64), lengths, p)
    y32 = core.sparse_topk_mask(x32, k, epsilon=eps32, p=p, lengths=lengths)
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, expected32, atol=5e-5)


@pytest.mark.parametrize("p", [pytest.param(2.0, marks=pytest.mark.slow), 4 / 3])
def test_jvp_and_vjp_match_finite_differences(p):
    rng = np.random.default_rng(11)
    rows, n = 6, 40
    x = rng.normal(size=(rows, n))
    x[1, :3] = x[1, 3]  # ties at the top
    x[2] *= 1e4
    k = np.array([1, 2, 3, 5, 8, 16])
    eps = np.array([0.1, 0.3, 0.05, 1.0, 0.2, 0.5]) * np.array([1, 1, 1e4, 1, 1, 1])
    t = rng.normal(size=(rows, n))
    ct = rng.normal(size=(rows, n))

    def f(z):
        return core.sparse_topk_mask(z, k, epsilon=eps, p=p)

    y, jvp = jax.jvp(f, (jnp.asarray(x),), (jnp.asarray(t),))
    fd = oracles.central_difference(f, x, t, h=1e-7)
    np.testing.assert_allclose(jvp, fd, atol=1e-5)
    (vjp,) = jax.vjp(f, jnp.asarray(x))[1](jnp.asarray(ct))
    assert float(jnp.sum(vjp * t)) == pytest.approx(float(jnp.sum(ct * jvp)), rel=1e-9, abs=1e-9)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(jvp)) and np.all(np.isfinite(vjp))
    # The epsilon derivative as well.
    _, deps = jax.jvp(lambda e: core.sparse_topk_mask(x, k, epsilon=e, p=p), (eps,), (eps,))
    fd_eps = oracles.central_difference(
        lambda e: core.sparse_topk_mask(x, k, epsilon=e, p=p), eps, eps, h=1e-7
    )
    np.testing.assert_allclose(deps, fd_eps, atol=1e-5)


def test_derivatives_are_finite_on_degenerate_rows():
    x = np.array(
        [
            [0.5] * 20,  # all equal, support > K: the general solver
            [3.0, 3.0, 3.0] + [0.0] * 17,  # repeated leaders (chain repeats)
            [1e8, 1e8 - 1, 1e8 - 2] + [0.0] * 17,  # huge scale, tiny eps below
            [2.0, 1.0] + [-1.0] * 18,  # hard case: the JVP is 0
        ]
    )
    k = np.array([2, 2, 1, 1])
    eps = np.array([0.1, 0.5, 1.5, 0.1])

    @jax.jit
    def jacobians(x):
        def f(z):
            return core.sparse_topk_mask(z, k, epsilon=eps)

        return f(x), jax.jacfwd(f)(x), jax.jacrev(f)(x)

    y, jf, jr = (np.asarray(a) for a in jacobians(jnp.asarray(x)))
    assert np.all(np.isfinite(jf)) and np.all(np.isfinite(jr))
    np.testing.assert_allclose(jf, jr, atol=1e-9)
    np.testing.assert_allclose(y[0], np.full(20, 0.1))
    np.testing.assert_allclose(y[1, :3], np.full(3, 2 / 3))
    np.testing.assert_array_equal(y[3], [1.0] + [0.0] * 19)  # hard: exactly the indicator
    assert np.all(jf[3] == 0)


def test_vmap_and_jit_agree_with_the_batch():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(8, 30)), jnp.float32)
    k = jnp.arange(1, 9)
    batched = core.sparse_topk_mask(x, k, epsilon=0.2)
    mapped = jax.jit(jax.vmap(lambda row, kk: core.sparse_topk_mask(row, kk, epsilon=0.2)))(x, k)
    np.testing.assert_allclose(mapped, batched, atol=1e-6)


def test_failed_rows_take_the_general_solver():
    # 1 and then 20 of 32 rows with support > K (eps = 100); k = 20 > K in one row.
    rng = np.random.default_rng(9)
    x = rng.normal(size=(32, 40))
    k = np.full(32, 3)
    k[-1] = 20
    for wide in (1, 20):
        eps = np.full(32, 0.1)
        eps[:wide] = 100.0
        expected = oracle(x, k, eps, np.full(32, 40), 4 / 3)
        y = core.sparse_topk_mask(x, k, epsilon=eps)
        np.testing.assert_allclose(y, expected, atol=1e-9)


@pytest.mark.parametrize(
    ("rows", "n", "k"),
    [
        (256, 64, 2),
        pytest.param(256, 64, 1, marks=pytest.mark.slow),
        pytest.param(128, 256, 8, marks=pytest.mark.slow),
        pytest.param(64, 1000, 5, marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("source", SOURCES)
def test_router_shapes_settle_on_the_candidates(rows, n, k, source):
    # The bench's setting: N(0, 1) scores, eps = 0.1; every row is solved on its candidates.
    x = np.random.default_rng(0).standard_normal((rows, n)).astype(np.float32)
    eps = np.full(rows, 0.1, np.float32)
    tau, y = threshold_and_mask(x, np.full(rows, k), eps, np.full(rows, n), 4 / 3, source)
    assert not np.any(np.isnan(np.asarray(tau)))
    np.testing.assert_allclose(np.sum(y, axis=-1), k, rtol=1e-5)
