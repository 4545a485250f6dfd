"""POST /v1/sort, /v1/rank and /v1/isotonic: dense rows that match the core, and their errors."""

from __future__ import annotations

import httpx
import jax
import numpy as np
import pytest

import core
from api.models import DenseResponse

X = [[0.3, 2.0, -1.0, 1.9], [4.0, 1.0, 3.0]]


def offered(http: httpx.Client) -> set[str]:
    return {op["name"] for op in http.get("/v1/operators").json()["operators"]}


@pytest.mark.parametrize(
    ("route", "body", "reference"),
    [
        ("sort", {"epsilon": 0.5}, lambda v: core.soft_sort(v, epsilon=np.float32(0.5))),
        (
            "rank",
            {"descending": True},
            lambda v: core.soft_rank(v, epsilon=np.float32(1.0), descending=True),
        ),
        ("isotonic", {"increasing": True}, lambda v: core.isotonic_regression(v, increasing=True)),
    ],
)
def test_dense_operators_match_the_core_with_derivatives(
    http: httpx.Client, route: str, body: dict[str, object], reference: object
) -> None:
    if route not in offered(http):
        pytest.skip(f"core has no {route}")
    tangent = [[1.0] * len(row) for row in X]
    cotangent = [[float(i) for i in range(len(row))] for row in X]
    response = http.post(
        f"/v1/{route}", json={"x": X, "tangent": tangent, "cotangent": cotangent, **body}
    )
    assert response.status_code == 200, response.text
    answer = DenseResponse.model_validate_json(response.content)
    assert answer.operator == route
    for row, xs, ts, cs in zip(answer.rows, X, tangent, cotangent, strict=True):
        x32 = np.asarray(xs, np.float32)
        want, want_jvp = jax.jvp(reference, (x32,), (np.asarray(ts, np.float32),))  # type: ignore[arg-type]
        _, pullback = jax.vjp(reference, x32)  # type: ignore[arg-type]
        (want_vjp,) = pullback(np.asarray(cs, np.float32))
        assert row.n == len(xs)
        np.testing.assert_allclose(row.values, want, atol=1e-5)
        np.testing.assert_allclose(row.jvp or [], want_jvp, atol=1e-4)
        np.testing.assert_allclose(row.vjp or [], want_vjp, atol=1e-4)


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("sort", {"x": [[1.0, 2.0]], "k": 1}, "k"),
        ("sort", {"x": [[1.0, 2.0]], "epsilon": [0.1, 0.2]}, "epsilon"),
        ("rank", {"x": [[1.0, 2.0]], "regularization": "l3"}, "regularization"),
        ("isotonic", {"x": [[1.0, 2.0]], "tangent": [[1.0]]}, "tangent[0]"),
        ("isotonic", {"x": [[1.0, 2.0]], "epsilon": 0.1}, "epsilon"),
        ("isotonic", {"x": [[]]}, "x[0]"),
    ],
)
def test_dense_errors_name_the_field(
    http: httpx.Client, route: str, body: dict[str, object], field: str
) -> None:
    response = http.post(f"/v1/{route}", json=body)
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}
