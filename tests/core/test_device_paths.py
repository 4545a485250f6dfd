"""The core's code paths that differ between the CPU and accelerators, run on this backend.

``core._isotonic.map_rows`` picks how the PAV's rows run from ``jax.default_backend()`` when
tracing: one after another with ``lax.map`` on the CPU, vmapped in lock-step elsewhere. On one
machine only one branch would ever run, so here both are forced and held to the oracles
(bench/gpu_check.sh runs this file on the GPU, and in its CPU dry run); and float64 on whatever
device runs the tests. The core's functions are jitted, and a trace is cached by shape only, not
by backend: caches are cleared around each forced trace, or the second branch would silently reuse
the first one's program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import isotonic_regression as scipy_isotonic

import core
from tests.core import oracles


@pytest.fixture
def trace_as(monkeypatch):
    """``trace_as(backend)``: later traces take ``backend``'s branches; JAX's caches are cleared
    then and afterwards, so no program traced for another backend is reused or leaks out."""

    def use(backend: str) -> None:
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        jax.clear_caches()

    yield use
    jax.clear_caches()


def _maps_rows(function, *arguments) -> bool:
    """Whether tracing ``function`` maps rows one after another (``lax.map`` is a ``scan``; the
    PAV's own loops are ``while`` loops, and nothing else in these operators scans)."""
    return "scan[" in str(jax.make_jaxpr(function)(*arguments))


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_pav_rows_sequential_and_lockstep_agree_with_the_oracles(trace_as, backend):
    """Trace as if on ``backend``: ``cpu`` maps the rows (a ``scan`` around the PAV's loop),
    ``gpu`` vmaps them (no ``scan``); both give scipy's and the float64 PAV oracle's answers."""
    trace_as(backend)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(12, 20)) - np.linspace(0, 2, 20)
    y[::3, 4:9] = 0.5  # ties
    lengths = np.array([20, 1, 7, 0, 20, 13] * 2)

    def isotonic(v, n):
        return core.isotonic_regression(v, lengths=n)

    assert _maps_rows(isotonic, y, lengths) == (backend == "cpu")
    got = jax.jit(isotonic)(y, lengths)
    for i, n in enumerate(lengths):
        if n:
            expected = scipy_isotonic(y[i, :n], increasing=False).x
            np.testing.assert_allclose(got[i, :n], expected, atol=1e-12)

    x = rng.normal(size=(6, 16))
    k = np.array([1, 2, 3, 5, 8, 15])

    def pav_mask(z):
        return core.sparse_topk_mask(z, k, epsilon=0.3, solver="pav")

    assert _maps_rows(pav_mask, x) == (backend == "cpu")
    y_pav, jvp = jax.jit(lambda z, t: jax.jvp(pav_mask, (z,), (t,)))(x, x[::-1])
    expected = np.stack([oracles.pav_mask(x[i], k[i], 0.3, 4 / 3) for i in range(6)])
    np.testing.assert_allclose(y_pav, expected, atol=1e-9)
    # The JVP against central differences of the same branch (away from kinks: a smooth region).
    step = 1e-6
    plus, minus = (np.asarray(jax.jit(pav_mask)(x + s * x[::-1])) for s in (step, -step))
    np.testing.assert_allclose(jvp, (plus - minus) / (2 * step), atol=1e-5)

    ranks = jax.jit(lambda z: core.soft_rank(z, epsilon=0.5))(x)
    assert _maps_rows(core.soft_rank, x) == (backend == "cpu")
    np.testing.assert_allclose(np.sum(ranks, axis=-1), 16 * 17 / 2, rtol=1e-12)
    hard = np.argsort(np.argsort(x, axis=-1), axis=-1) + 1.0
    small = jax.jit(lambda z: core.soft_rank(z, epsilon=1e-6))(x)  # small epsilon: the hard ranks
    np.testing.assert_allclose(small, hard, atol=1e-9)


def test_float64_operators_on_this_device():
    """float64 end to end on the default device (the PAV branches above run in float64 too)."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 10)), jnp.float64)
    assert x.dtype == jnp.float64, "float64 must be enabled (tests/conftest.py)"
    assert x.devices() == {jax.devices()[0]}
    y2 = core.sparse_topk_mask(x, 3, epsilon=0.2, p=2.0)
    expected2 = np.stack([oracles.scipy_mask_p2(np.asarray(r), 3, 0.2) for r in x])
    assert y2.dtype == jnp.float64
    np.testing.assert_allclose(y2, expected2, atol=1e-12)
    soft = core.soft_topk_mask(x, 3, epsilon=0.5)
    assert soft.dtype == jnp.float64
    np.testing.assert_allclose(jnp.sum(soft, axis=-1), 3.0, atol=1e-12)
