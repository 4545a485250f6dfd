"""Issue 12 over HTTP: the edge inputs that used to answer 500 or a wrong number are answered
exactly, and the few the core states it cannot compute (``core.domain_limits``) are a 422 naming
the row's field, listed per operator in ``GET /v1/operators``."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import core


def answer(http: httpx.Client, route: str, body: dict) -> list[list[float]]:
    response = http.post(route, json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return [row["values"] for row in data["rows"]]


def refused(http: httpx.Client, route: str, body: dict) -> dict[str, str]:
    response = http.post(route, json=body)
    assert response.status_code == 422, response.text
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/sort", {"x": [[1.0, 2.0]], "epsilon": 1e-45}),
        ("/v1/sort", {"x": [[1.0, 2.0]], "epsilon": 5e-324}),  # 0 in float32: the hard limit
        ("/v1/sort", {"x": [[3e38, -3e38]]}),
        ("/v1/sort", {"x": [[1e8, -1e8, 1, 0]]}),
        ("/v1/rank", {"x": [[1e8, -1e8, 1, 0]]}),
        ("/v1/rank", {"x": [[3e8, 1e8, 2e8, 0]], "epsilon": 0.01}),
        ("/v1/isotonic", {"x": [[3e38, -3e38, 3e38, -3e38]]}),
        ("/v1/topk", {"x": [[3e38, -3e38, 1, 0]], "k": 2, "operator": "soft"}),
        ("/v1/topk", {"x": [[3e38, -3e38, 1, 0]], "k": 2}),
        ("/v1/topk", {"x": [[3e38, -3e38, 1, 0]], "k": 2, "output": "magnitude"}),
    ],
)
def test_the_reported_edge_inputs_are_answered_like_the_core(
    http: httpx.Client, route: str, body: dict
) -> None:
    got = answer(http, route, body)
    assert all(np.all(np.isfinite(row)) for row in got)
    x = np.asarray(body["x"], np.float32)
    if route == "/v1/sort":
        epsilon = np.float32(body.get("epsilon", 1.0))
        want = np.asarray(core.soft_sort(x, epsilon=epsilon))
        np.testing.assert_array_equal(got, want)
        assert np.all(np.diff(got[0]) >= 0)  # ascending, and within a few ulps of the hard sort
        if body.get("epsilon", 1.0) < 1e-30:
            np.testing.assert_array_equal(got[0], np.sort(x[0]))
    if route == "/v1/rank":
        ranks = np.asarray(got[0], np.float64)
        n = ranks.size
        assert abs(ranks.sum() - n * (n + 1) / 2) <= 1e-5 * n * n
        assert np.all((ranks >= 1 - 1e-6) & (ranks <= n + 1e-6))


def test_a_subnormal_scale_row_is_refused_naming_it(http: httpx.Client) -> None:
    body = {"x": [[1.0, 2.0], [1e-35, 2e-35]]}
    assert "subnormal" in refused(http, "/v1/sort", body)["x[1]"]
    topk = {"x": [[1e-35, 2e-35, 0.0]], "k": 1, "operator": "hard", "output": "values"}
    assert "x[0]" in refused(http, "/v1/topk", topk)
    # Masks and ranks are dimensionless: the same row is answered.
    ranks = answer(http, "/v1/rank", {"x": [[1e-35, 2e-35]], "epsilon": 1e-37})
    np.testing.assert_allclose(ranks, [[1.0, 2.0]])


def test_a_sparse_mask_beyond_its_ratio_is_refused_naming_epsilon(http: httpx.Client) -> None:
    body = {"x": [[3e38, -3e38, 1.0, 0.0]], "k": 2, "epsilon": 1e-6}
    assert "2^140" in refused(http, "/v1/topk", body)["epsilon"]
    per_row = {"x": [[1.0, 0.0], [3e38, 0.0]], "k": 1, "epsilon": [1e-6, 1e-6]}
    assert set(refused(http, "/v1/topk", per_row)) == {"epsilon[1]"}
    # Within the ratio it is answered, exactly: the top entry carries all of k = 1.
    fine = answer(http, "/v1/topk", {"x": [[3e38, -3e38, 1.0, 0.0]], "k": 1, "epsilon": 1e-2})
    assert fine == [[1.0]]


def test_a_derivative_that_would_overflow_is_refused_naming_its_direction(
    http: httpx.Client,
) -> None:
    body = {"x": [[0.1, 0.2, 0.3]], "k": 1, "operator": "soft", "epsilon": 1e-30}
    body["tangent"] = [[1e20, 0.0, 0.0]]
    assert "overflow" in refused(http, "/v1/topk", body)["tangent[0]"]
    body["tangent"] = [[1.0, 0.0, 0.0]]
    response = http.post("/v1/topk", json=body)
    assert response.status_code == 200, response.text


def test_dykstra_with_another_p_is_refused_naming_the_solver(http: httpx.Client) -> None:
    reasons = refused(http, "/v1/topk", {"x": [[1.0, 2.0]], "k": 1, "solver": "dykstra"})
    assert "p = 2 only" in reasons["solver"]
    answer(http, "/v1/topk", {"x": [[1.0, 2.0]], "k": 1, "solver": "dykstra", "p": 2})


def test_the_operators_list_their_domain(http: httpx.Client) -> None:
    operators = {o["name"]: o for o in http.get("/v1/operators").json()["operators"]}
    limits = core.domain_limits()
    for name, operator in operators.items():
        assert operator["domain"] == list(limits.get(name, ()))
    assert any("dykstra" in line for line in operators["sparse"]["domain"])
