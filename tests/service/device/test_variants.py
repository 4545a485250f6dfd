"""The variant table holds every computation a request can ask for, once; the identities it
relies on (derived outputs, solver aliases, refused combinations) are the core's own."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import core
from service.device.buckets import ShapeBucket
from service.device.kernels import (
    SELECTOR_LENGTH,
    KernelKey,
    argument_shapes,
    kernel_function,
    selector,
)
from service.device.operators import bind_operators
from service.device.variants import (
    DERIVED,
    MIRRORED,
    SOLVER_ALIASES,
    Variant,
    form_of,
    refusal,
    variant_table,
)

OPERATORS = bind_operators((4 / 3, 1.5, 2.0))
X = jnp.array([[0.3, -1.2, 0.25, 2.0, -0.4, 0.2, 0.0, 1.1]], jnp.float32)
T = jnp.array([[1.0, 0.5, -2.0, 0.1, 0.3, -0.7, 1.5, 0.2]], jnp.float32)


def test_every_request_form_is_in_the_table_and_the_table_has_no_twins() -> None:
    table = variant_table(OPERATORS)
    assert len(table) == len(set(table))
    used = set()
    for operator in OPERATORS.values():
        knobs = [p for p in operator.spec.parameters if p.compile_time]
        choices = [(False, True) if p.type == "bool" else p.choices for p in knobs]
        for values in itertools.product(*choices):  # type: ignore[arg-type]
            given = dict(zip([p.name for p in knobs], values, strict=True))
            static = operator.static(given)
            if refusal(operator.name, static) is not None:
                continue
            for output in operator.functions:
                used.add(form_of(operator, output, static).variant)
    assert used == set(table)
    # sparse: 3 p x (threshold, pav) + dykstra at p=2, for mask and magnitude; soft; hard; sort
    # and rank: regularization (ascending is read from descending); isotonic: solver (increasing
    # is read from decreasing).
    assert len(table) == 14 + 1 + 1 + 2 + 2 + 2


@pytest.mark.parametrize("function", sorted(DERIVED))
def test_derived_outputs_are_the_cores_own_with_their_derivatives(function: str) -> None:
    base, of_magnitude, times_x = DERIVED[function]
    keywords = {"epsilon": 0.5} if function.startswith("sparse") else {}

    def derived(x: jax.Array) -> jax.Array:
        y = getattr(core, base)(jnp.abs(x) if of_magnitude else x, 3, **keywords)
        return x * y if times_x else y

    def direct(x: jax.Array) -> jax.Array:
        return getattr(core, function)(x, 3, **keywords)

    want, want_jvp = jax.jvp(direct, (X,), (T,))
    got, got_jvp = jax.jvp(derived, (X,), (T,))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_jvp, want_jvp, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("function", ["sparse_topk_mask", "sparse_topk_magnitude"])
@pytest.mark.parametrize("p", [4 / 3, 1.5, 2.0])
def test_solver_aliases_compute_the_same(function: str, p: float) -> None:
    for alias, solver in SOLVER_ALIASES.items():
        f = getattr(core, function)
        np.testing.assert_array_equal(
            f(X, 3, epsilon=0.5, p=p, solver=alias), f(X, 3, epsilon=0.5, p=p, solver=solver)
        )


@pytest.mark.parametrize("function", ["sparse_topk_mask", "sparse_topk_magnitude"])
def test_refused_combinations_are_the_ones_the_core_refuses(function: str) -> None:
    solvers = OPERATORS["sparse"].spec.parameter("solver").choices  # type: ignore[union-attr]
    for p, solver in itertools.product((4 / 3, 1.5, 2.0, 3.0), solvers):  # type: ignore[arg-type]
        refused = refusal("sparse", (("p", p), ("solver", solver))) is not None
        try:
            jax.eval_shape(lambda x, p=p, s=solver: getattr(core, function)(x, 2, p=p, solver=s), X)
        except ValueError:
            assert refused, (p, solver)
        else:
            assert not refused, (p, solver)


def mirror_rows(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Rows at several scales, with ties, signed zeros, subnormals and padding."""
    n = 32
    x = rng.normal(size=(8, n)).astype(np.float32)
    x[1] = np.round(x[1] * 2) / 2  # ties
    x[2] *= np.float32(1e-38)  # subnormals among normal numbers
    x[3] = np.float32(1e-44) * np.arange(-n // 2, n // 2)  # subnormals and zeros only
    x[4] *= np.float32(3e37)
    x[5, ::3] = -0.0
    x[6] = 1.0  # one tie across the row
    tangent = rng.normal(size=x.shape).astype(np.float32)
    cotangent = rng.normal(size=x.shape).astype(np.float32)
    lengths = np.array([n, n, n, n, n, 17, 1, 9], np.int32)
    k = np.ones(8, np.int32)
    epsilon = np.array([1, 0.1, 1e30, 3e38, 1e-30, 3, 1, 0.01], np.float32)
    return x, tangent, cotangent, k, epsilon, lengths


@pytest.mark.parametrize(
    ("function", "name", "other"),
    [
        ("soft_sort", "regularization", "l2"),
        ("soft_sort", "regularization", "kl"),
        ("soft_rank", "regularization", "l2"),
        ("soft_rank", "regularization", "kl"),
        ("isotonic_regression", "solver", "pav"),
        ("isotonic_regression", "solver", "dykstra"),
    ],
)
def test_mirrored_choices_read_through_the_other_are_the_cores_to_the_bit(
    function: str, name: str, other: str
) -> None:
    """Values, JVP and VJP lanes of the kernel, bit for bit, against the core's own choice."""
    knob, mirrored, _, _ = MIRRORED[function]
    operator = next(o for o in OPERATORS.values() if function in o.spec.outputs.values())
    output = next(out for out, f in operator.spec.outputs.items() if f == function)
    static = operator.static({knob: mirrored, name: other})
    form = form_of(operator, output, static)
    assert form.of_negation and form.variant != Variant(function, static)
    arrays = mirror_rows(np.random.default_rng(1))
    lanes = []
    for variants, select in (
        (
            (Variant(function, static),),
            np.zeros(SELECTOR_LENGTH, np.int32),
        ),  # the core's own choice
        ((form.variant,), None),  # the other choice, read through negations
    ):
        key = KernelKey(variants, True, ShapeBucket(*arrays[0].shape))
        if select is None:
            select = selector(key, form)
        compiled = jax.jit(kernel_function(variants, True)).lower(*argument_shapes(key)).compile()
        lanes.append([np.asarray(lane) for lane in compiled(select, *arrays)])
    for got, want in zip(lanes[1], lanes[0], strict=True):
        np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
