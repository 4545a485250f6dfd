"""The variant table holds every computation a request can ask for, once; the identities it
relies on (derived outputs, solver aliases, refused combinations) are the core's own."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import core
from service.device.operators import bind_operators
from service.device.variants import DERIVED, SOLVER_ALIASES, form_of, refusal, variant_table

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
    # and rank: descending x regularization; isotonic: increasing x solver.
    assert len(table) == 14 + 1 + 1 + 4 + 4 + 4


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
