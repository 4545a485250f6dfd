"""Compiled kernels agree with the core called directly, stay float32, and never recompile."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import core
from service.device.buckets import ShapeBucket
from service.device.kernels import CompiledKernels, KernelInputs, KernelKey
from service.device.operators import bind_operators
from service.observability.compile_events import compile_stats, start_counting

OPERATORS = bind_operators((4 / 3, 1.5, 2.0))
BUCKET = ShapeBucket(4, 16)
LENGTHS = np.array([16, 5, 16, 5], dtype=np.int32)  # two lengths: two reference compilations
KS = np.array([3, 2, 16, 1], dtype=np.int32)
EPSILONS = np.array([0.1, 0.5, 1.0, 0.1], dtype=np.float32)


def padded(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(BUCKET.rows, BUCKET.n)).astype(np.float32)
    x[np.arange(BUCKET.n)[None, :] >= LENGTHS[:, None]] = 0.0
    return x


def key(derivative: str, operator: str = "sparse") -> KernelKey:
    static = (("p", 4 / 3), ("solver", "auto")) if operator == "sparse" else ()
    return KernelKey(operator, "mask", derivative, static, BUCKET)  # type: ignore[arg-type]


@functools.partial(jax.jit, static_argnums=0)
def direct(
    operator: str, x: jax.Array, t: jax.Array, c: jax.Array, k: jax.Array, epsilon: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The core on one unpadded row, with its JVP along ``t`` and its VJP of ``c``."""

    def f(v: jax.Array) -> jax.Array:
        if operator == "sparse":
            return core.sparse_topk_mask(v, k, epsilon=epsilon)
        return core.hard_topk_mask(v, k)

    out, jvp = jax.jvp(f, (x,), (t,))
    _, pullback = jax.vjp(f, x)
    return out, jvp, pullback(c)[0]


@pytest.mark.parametrize("operator", ["sparse", "hard"])
def test_kernels_match_the_core_row_by_row_with_both_derivatives(operator: str) -> None:
    rng = np.random.default_rng(0)
    x, tangent, cotangent = padded(rng), padded(rng), padded(rng)
    kernels = CompiledKernels(OPERATORS)
    the_key = key("both", operator)
    inputs = KernelInputs(x, KS, EPSILONS, LENGTHS, tangent, cotangent)
    out, jvp, vjp = (np.asarray(a) for a in kernels.get(the_key)(*inputs.arguments(the_key)))
    assert out.dtype == jvp.dtype == vjp.dtype == np.float32
    for i, n in enumerate(LENGTHS):
        want, want_jvp, want_vjp = direct(
            operator, x[i, :n], tangent[i, :n], cotangent[i, :n], KS[i], EPSILONS[i]
        )
        np.testing.assert_allclose(out[i, :n], want, atol=2e-5)
        np.testing.assert_allclose(jvp[i, :n], want_jvp, atol=2e-4)
        np.testing.assert_allclose(vjp[i, :n], want_vjp, atol=2e-4)
        assert not out[i, n:].any()
        assert not vjp[i, n:].any()


def test_calling_a_kernel_with_another_shape_raises_instead_of_compiling() -> None:
    kernels = CompiledKernels(OPERATORS)
    the_key = key("none", "hard")
    executable = kernels.get(the_key)
    wrong = KernelInputs(
        np.zeros((2, 16), np.float32), KS[:2], EPSILONS[:2], LENGTHS[:2]
    ).arguments(the_key)
    with pytest.raises(TypeError):
        executable(*wrong)


def test_the_compile_listener_counts_compilations_and_nothing_on_reuse() -> None:
    start_counting()
    kernels = CompiledKernels(OPERATORS)
    the_key = KernelKey("hard", "values", "none", (), ShapeBucket(2, 32))
    before = compile_stats().compilations
    executable = kernels.get(the_key)
    compiled = compile_stats().compilations
    assert compiled > before, "jax.monitoring no longer reports backend compiles"
    inputs = KernelInputs(
        np.ones((2, 32), np.float32),
        np.array([1, 2], np.int32),
        np.ones(2, np.float32),
        np.array([32, 3], np.int32),
    )
    for _ in range(3):
        jax.block_until_ready(executable(*inputs.arguments(the_key)))
    assert kernels.get(the_key) is executable
    assert compile_stats().compilations == compiled
