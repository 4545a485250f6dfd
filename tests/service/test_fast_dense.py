"""The fast reader of the dense routes accepts only what the strict path accepts, identically."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from pydantic import ValidationError

from api.models import IsotonicRequest, SoftSortRequest
from service.engine import Engine
from service.errors import ApiError
from service.fast_dense import PlainDenseReader
from service.operators import available_operators
from service.prepared import PreparedRequest, prepare_dense_request
from tests.service.serving import small_settings
from tests.service.test_fast_request import agrees, assert_same, padded

MODELS = {"sort": SoftSortRequest, "rank": SoftSortRequest, "isotonic": IsotonicRequest}
ROWS = [[0.5, -1.0, 2.0], [4.0], [1, 2]]
VALID: dict[str, list[dict[str, object]]] = {
    "sort": [
        {"x": [[0.5, -1.0, 2.0, 3.5]]},
        {"x": ROWS, "epsilon": 0.5, "descending": True, "regularization": "kl"},
        {"x": ROWS, "epsilon": [0.5, 1, 2.0], "descending": False},
        {
            "x": ROWS,
            "tangent": [[1, 0, 0], [1.0], [0.5, 0.5]],
            "cotangent": [[0, 0, 1], [2], [1, 1]],
        },
        {"x": [[3e38, -3e38]], "epsilon": None, "tangent": None},
    ],
    "isotonic": [
        {"x": [[0.5, -1.0, 2.0, 3.5]]},
        {"x": ROWS, "increasing": True, "solver": "dykstra"},
        {"x": ROWS, "increasing": False, "tangent": [[1, 0, 0], [1.0], [0.5, 0.5]]},
    ],
}
VALID["rank"] = VALID["sort"]
INVALID: dict[str, list[object]] = {
    "sort": [
        {"x": [[0.5, True]]},
        {"x": [[0.5, 1.0]], "descending": 1},
        {"x": [[0.5, 1.0]], "descending": None},
        {"x": [[0.5, 1.0]], "descending": "true"},
        {"x": [[0.5, 1.0]], "regularization": "l1"},
        {"x": [[0.5, 1.0]], "regularization": None},
        {"x": [[0.5, 1.0]], "epsilon": 0},
        {"x": [[0.5, 1.0]], "epsilon": [1.0, 2.0]},
        {"x": [[0.5, 1.0]], "epsilon": 1e39},
        {"x": [[0.5, 1.0]], "increasing": True},
        {"x": [[0.5, 1.0]], "solver": "pav"},
        {"x": [[0.5, 1.0]], "tangent": [[1.0]]},
        {"x": [[0.5, 1.0]], "cotangent": [[1.0, "2"]]},
        {"x": [[0.5, 1e39]]},
        {"x": [[]]},
        {"x": []},
        {"x": [[0.1] * 65]},
        {"x": [[0.5, 1.0]], "k": 1},
        [1, 2],
    ],
    "isotonic": [
        {"x": [[0.5, 1.0]], "increasing": 0},
        {"x": [[0.5, 1.0]], "increasing": None},
        {"x": [[0.5, 1.0]], "solver": "threshold"},
        {"x": [[0.5, 1.0]], "epsilon": 0.5},
        {"x": [[0.5, 1.0]], "descending": True},
        {"x": [[0.5, False]], "increasing": True},
        {"x": [[0.5, 1.0]], "tangent": [[1.0, 2.0], [3.0]]},
    ],
}
INVALID["rank"] = INVALID["sort"]
CASES = [(op, body) for op, bodies in VALID.items() for body in bodies]
BAD = [(op, body) for op, bodies in INVALID.items() for body in bodies]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = Engine(small_settings(), available_operators())
    yield engine
    engine.close()


def strict(operator: str, body: bytes, engine: Engine) -> PreparedRequest | None:
    try:
        parsed = MODELS[operator].model_validate_json(body)
        return prepare_dense_request(operator, parsed, engine)
    except (ValidationError, ApiError):
        return None


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize(("operator", "request_body"), CASES)
def test_a_valid_body_reads_exactly_as_on_the_strict_path(
    engine: Engine, operator: str, request_body: object, big: bool
) -> None:
    body = padded(json.dumps(request_body).encode(), big)
    slow = strict(operator, body, engine)
    assert slow is not None, "the oracle must accept this body"
    fast = PlainDenseReader(engine, operator).read(body)
    assert fast is not None, "a plainly valid body should take the fast path"
    assert_same(fast, slow, engine)


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize(("operator", "request_body"), BAD)
def test_a_body_the_strict_path_refuses_is_left_to_it(
    engine: Engine, operator: str, request_body: object, big: bool
) -> None:
    body = padded(json.dumps(request_body).encode(), big)
    assert strict(operator, body, engine) is None, "the oracle must refuse this body"
    assert PlainDenseReader(engine, operator).read(body) is None


def test_mutated_bodies_never_pass_the_fast_path_alone(engine: Engine) -> None:
    rng = np.random.default_rng(0)
    replacements: list[object] = [
        0, -1, 1, 0.5, 2.0, True, False, None, "l2", "kl", "pav", "dykstra", "", [], [1],
        [0.5, 1.0, 2.0], [[1.0]], [[0.5, 2, 1.0]], [[1.0], [2.0], [3.0]], {"a": 1}, 1e39,
    ]  # fmt: skip
    fields = [
        "x", "epsilon", "descending", "regularization", "increasing", "solver", "tangent",
        "cotangent", "other",
    ]  # fmt: skip
    accepted = 0
    for _ in range(1000):
        operator = ("sort", "rank", "isotonic")[rng.integers(3)]
        request = dict(VALID[operator][rng.integers(len(VALID[operator]))])
        for _ in range(rng.integers(1, 3)):
            request[fields[rng.integers(len(fields))]] = replacements[
                rng.integers(len(replacements))
            ]
        body = padded(json.dumps(request).encode(), big=rng.random() < 0.5)
        fast = PlainDenseReader(engine, operator).read(body)
        accepted += agrees(fast, strict(operator, body, engine), body, engine)
    assert accepted > 30
