"""Compiled kernels agree with the core called directly on each unpadded row, whichever variant
of a multi-variant kernel is selected, stay float32, and never recompile."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest

import core
from service.device.buckets import ShapeBucket
from service.device.kernels import (
    SELECTOR_LENGTH,
    CompiledKernels,
    KernelInputs,
    KernelKey,
    arguments,
    selector,
)
from service.device.operators import bind_operators
from service.device.variants import form_of, variant_table
from service.observability.compile_events import compile_stats, start_counting
from service.settings import Settings
from tests.service.serving import SMALL

OPERATORS = bind_operators(Settings.from_env({}).p_values)  # the test servers' variants
TABLE = variant_table(OPERATORS)
# The test servers' cover: compiled once per process, shared with them through JAX's caches.
COVER = KernelKey(TABLE, True, ShapeBucket.parse(SMALL["cover_buckets"][0]))  # type: ignore[index]
LENGTHS = np.array([64, 5, 1, 1, 1, 1, 1, 1], dtype=np.int32)  # two real rows, then padding
KS = np.array([3, 2, 1, 1, 1, 1, 1, 1], dtype=np.int32)
EPSILONS = np.array([0.5, 0.3, 1, 1, 1, 1, 1, 1], dtype=np.float32)
REAL = 2

# (operator, output, compile-time parameters given): derived outputs, the solver alias, dense
# knobs, mirrored choices (ascending sort and rank, increasing isotonic: read from the other
# choice); the routes' tests (tests/service/ingress) send every operator through the same cover.
FORMS: list[tuple[str, str, dict[str, Any]]] = [
    ("sparse", "values", {"p": 2.0, "solver": "dykstra"}),
    ("sparse", "magnitude", {"p": 4 / 3, "solver": "auto"}),
    ("soft", "mask", {}),
    ("hard", "magnitude", {}),
    ("sort", "values", {"descending": True, "regularization": "kl"}),
    ("sort", "values", {"descending": False, "regularization": "l2"}),
    ("rank", "values", {"descending": False, "regularization": "kl"}),
    ("isotonic", "values", {"increasing": True, "solver": "dykstra"}),
]


def padded(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(COVER.bucket.rows, COVER.bucket.n)).astype(np.float32)
    x[np.arange(COVER.bucket.n)[None, :] >= LENGTHS[:, None]] = 0.0
    x[REAL:] = 0.0
    return x


@functools.cache
def cover() -> CompiledKernels:
    kernels = CompiledKernels()
    kernels.build(COVER)
    return kernels


def core_function(operator: str, output: str, given: dict[str, Any]) -> Callable[..., Any]:
    bound = OPERATORS[operator]
    function = getattr(core, bound.spec.outputs[output])
    static = dict(bound.static(given))

    def call(x: jax.Array, k: jax.Array, epsilon: jax.Array, lengths: jax.Array) -> jax.Array:
        keywords = {**static, "lengths": lengths}
        if bound.spec.takes_epsilon:
            keywords["epsilon"] = epsilon
        return function(x, k, **keywords) if bound.spec.takes_k else function(x, **keywords)

    return call


@functools.partial(jax.jit, static_argnums=0)
def reference(form: int, *arrays: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The core's output, JVP and VJP on the real rows, each row masked by its own length (the
    core's padding rule; tests/core checks it against unpadded rows), in one compilation."""
    x, tangent, cotangent, k, epsilon, lengths = arrays
    function = core_function(*FORMS[form])

    def of_x(v: jax.Array) -> jax.Array:
        return function(v, k, epsilon, lengths)

    out, jvp = jax.jvp(of_x, (x,), (tangent,))
    _, pullback = jax.vjp(of_x, x)
    return out, jvp, pullback(cotangent)[0]


@pytest.mark.parametrize(("operator", "output", "given"), FORMS, ids=lambda v: str(v))
def test_each_variant_of_the_cover_matches_the_core_with_both_lanes(
    operator: str, output: str, given: dict[str, Any]
) -> None:
    rng = np.random.default_rng(0)
    x, tangent, cotangent = padded(rng), padded(rng), padded(rng)
    form = form_of(OPERATORS[operator], output, OPERATORS[operator].static(given))
    inputs = KernelInputs(x, KS, EPSILONS, LENGTHS, tangent, cotangent)
    outputs = cover().get(COVER)(*arguments(COVER, selector(COVER, form), inputs))
    got = [np.asarray(a) for a in outputs]
    assert all(lane.dtype == np.float32 for lane in got)
    real = (x[:REAL], tangent[:REAL], cotangent[:REAL], KS[:REAL], EPSILONS[:REAL], LENGTHS[:REAL])
    index = FORMS.index((operator, output, given))
    for lane, want, tolerance in zip(got, reference(index, *real), (2e-5, 2e-4, 2e-4), strict=True):
        np.testing.assert_allclose(lane[:REAL], want, rtol=tolerance / 2, atol=tolerance)
        for i in range(REAL):
            assert not lane[i, LENGTHS[i] :].any()


def test_calling_a_kernel_with_another_shape_raises_instead_of_compiling() -> None:
    wrong = KernelInputs(
        np.zeros((2, 64), np.float32), KS[:2], EPSILONS[:2], LENGTHS[:2], *[np.zeros((2, 64))] * 2
    )
    select = np.zeros(SELECTOR_LENGTH, np.int32)
    with pytest.raises(TypeError):
        cover().get(COVER)(*arguments(COVER, select, wrong))


def test_a_kernel_that_was_never_built_is_a_key_error_not_a_compile() -> None:
    kernels = CompiledKernels()
    start_counting()
    before = compile_stats().compilations
    with pytest.raises(KeyError):
        kernels.get(COVER)
    assert compile_stats().compilations == before


def test_the_compile_listener_counts_compilations_and_nothing_on_reuse() -> None:
    start_counting()
    kernels = CompiledKernels()
    hard = next(v for v in TABLE if v.function == "hard_topk_mask")
    the_key = KernelKey((hard,), False, ShapeBucket(2, 32))
    before = compile_stats().compilations
    assert kernels.build(the_key) == "compiled"
    compiled = compile_stats().compilations
    assert compiled > before, "jax.monitoring no longer reports backend compiles"
    executable = kernels.get(the_key)
    inputs = KernelInputs(
        np.ones((2, 32), np.float32),
        np.array([1, 2], np.int32),
        np.ones(2, np.float32),
        np.array([32, 3], np.int32),
    )
    for _ in range(3):
        jax.block_until_ready(
            executable(*arguments(the_key, np.zeros(SELECTOR_LENGTH, np.int32), inputs))
        )
    assert kernels.build(the_key) is None  # already there: nothing to do
    assert kernels.get(the_key) is executable
    assert compile_stats().compilations == compiled
