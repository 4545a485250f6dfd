"""The stated domain: solver/p support, the sparse mask's ratio limit, the subnormal-row limit and
the derivative bound, as pure predicates; and that what they accept is what the core computes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import core
from api.registry import OPERATORS as OPERATOR_TABLE


def test_solver_p_mapping_is_what_the_solvers_do() -> None:
    assert set(core.SOLVER_P) == set(core.SOLVERS)
    assert core.solver_supports_p("dykstra", 2.0)
    assert not core.solver_supports_p("dykstra", 4 / 3)
    assert all(
        core.solver_supports_p(s, p)
        for s in ("auto", "threshold", "pav")
        for p in (1.1, 4 / 3, 3.0)
    )
    assert not core.solver_supports_p("threshold", 1.0)
    assert not core.solver_supports_p("nope", 2.0)
    x = jnp.array([0.3, 0.1, 0.25, -0.4, 0.2])
    for solver, supported in core.SOLVER_P.items():
        for p in (4 / 3, 2.0):
            if core.solver_supports_p(solver, p):
                assert bool(jnp.all(jnp.isfinite(core.sparse_topk_mask(x, 2, p=p, solver=solver))))
            else:
                assert supported is not None
                with pytest.raises(ValueError, match="SOLVER_P"):
                    core.sparse_topk_mask(x, 2, p=p, solver=solver)


def test_domain_violation_names_the_field() -> None:
    ok = {"max_abs_x": 1.0, "epsilon": 0.1}
    assert core.domain_violation("sparse", "mask", **ok, p=4 / 3, solver="auto") is None
    field, reason = core.domain_violation("sparse", "mask", **ok, p=4 / 3, solver="dykstra")
    assert field == "p" and "dykstra" in reason
    assert core.domain_violation("sparse", "mask", max_abs_x=3e38, epsilon=1e-45)[0] == "epsilon"
    assert core.domain_violation("sparse", "mask", max_abs_x=3e38, epsilon=1e-3) is None
    assert core.domain_violation("sort", max_abs_x=1e-40, epsilon=1.0)[0] == "x"
    assert core.domain_violation("rank", max_abs_x=1e-40, epsilon=1.0) is None  # dimensionless
    assert core.domain_violation("sparse", "mask", max_abs_x=1e-40, epsilon=1e-45) is None
    assert core.domain_violation("sort", max_abs_x=0.0) is None
    assert core.min_row_scale("float32") == 2.0**-103
    assert core.min_row_scale("float64") == 2.0**-970
    assert core.derivative_in_range(1.0, 1e-30)
    assert not core.derivative_in_range(1e10, 1e-30)
    assert core.derivative_in_range(0.0, 1e-45)


def test_domain_limits_cover_the_service_operators() -> None:
    limits = core.domain_limits()
    assert {spec.name for spec in OPERATOR_TABLE} == set(limits)
    assert any("dykstra" in line for line in limits["sparse"])


def test_rows_below_the_stated_scale_are_where_outputs_flush() -> None:
    # The limit is real: below min_row_scale the device flushes the subnormal answer to 0...
    x = np.array([1e-40, 2e-40, 3e-40, 0.0], np.float32)
    assert float(np.max(np.abs(core.soft_sort(x, epsilon=1.0)))) == 0.0
    # ...while just above it every output entry is within an ulp of max|x|.
    y = (x * 2.0**70).astype(np.float32)
    assert float(np.abs(y).max()) >= core.min_row_scale()
    np.testing.assert_allclose(
        core.soft_sort(y, epsilon=1e-45), np.sort(y), rtol=0, atol=np.abs(y).max() * 6e-8
    )
