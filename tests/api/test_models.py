"""The request model is strict; the response model expands sparse rows."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api import Limits, TopKRequest, TopKRow, validate_topk_request
from api.errors import field_path
from api.validation import per_row_k, size_errors

LIMITS = Limits(
    max_rows=4, max_n=8, max_k=5, max_entries=32, max_body_bytes=10_000, max_batch_rows=4
)


def test_defaults() -> None:
    request = TopKRequest(x=[[1.0, 2.0]], k=1)
    assert (request.operator, request.output) == ("sparse", "mask")
    assert request.epsilon is None
    assert request.tangent is None


@pytest.mark.parametrize(
    "fields",
    [
        {"x": [[1.0]], "k": True},
        {"x": [[1.0]], "k": "1"},
        {"x": [["1.0"]], "k": 1},
        {"x": [[float("nan")]], "k": 1},
        {"x": [[float("inf")]], "k": 1},
        {"x": [[1.0]], "k": 1, "unknown": 2},
        {"x": [[1.0]], "k": 1, "operator": "sorted"},
        {"x": [[1.0]], "k": 0},
        {"x": [[1.0]], "k": 1, "epsilon": -0.1},
    ],
)
def test_strict_types_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TopKRequest.model_validate(fields)


def test_integers_are_accepted_as_floats() -> None:
    assert TopKRequest.model_validate_json('{"x": [[1, 2]], "k": 1}').x == [[1.0, 2.0]]


def test_validation_collects_every_problem_with_its_field() -> None:
    request = TopKRequest(
        x=[[1.0, 2.0], [3.0]],
        k=[2, 2],
        operator="hard",
        epsilon=0.5,
        tangent=[[1.0], [1.0]],
    )
    fields = {e.field for e in validate_topk_request(request, LIMITS)}
    assert fields == {"k[1]", "epsilon", "tangent[0]"}


def test_size_errors_are_separate() -> None:
    request = TopKRequest(x=[[1.0] * 9] * 5, k=1)
    assert {e.field for e in size_errors(request, LIMITS)} == {"x", *(f"x[{i}]" for i in range(5))}
    assert per_row_k(TopKRequest(x=[[1.0]] * 3, k=1)) == [1, 1, 1]


def test_sparse_rows_expand_to_dense() -> None:
    row = TopKRow(indices=[3, 0], values=[1.0, 0.5], jvp=[0.1, 0.2], n=4, k=2)
    assert row.dense() == [0.5, 0.0, 0.0, 1.0]
    assert row.dense_jvp() == [0.2, 0.0, 0.0, 0.1]
    with pytest.raises(ValueError, match="tangent"):
        TopKRow(indices=[], values=[], n=1, k=1).dense_jvp()


def test_field_paths() -> None:
    assert field_path(("x", 2, 5)) == "x[2][5]"
    assert field_path(()) == "body"
