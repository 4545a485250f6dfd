"""The fast reader of ``POST /v1/topk`` accepts only what the strict path accepts, identically."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from pydantic import ValidationError

from api.models import TopKRequest
from service.assembly import pad_batch
from service.buckets import ShapeBucket
from service.engine import Engine
from service.errors import ApiError
from service.fast_request import NUMPY_BODY_BYTES, PlainTopKReader
from service.operators import available_operators
from service.prepared import PreparedRequest, prepare_request
from tests.service.serving import small_settings

VALID: list[object] = [
    {"x": [[0.5, -1.0, 2.0, 3.5]], "k": 2},
    {"x": [[1, 2, 3]], "k": 1},  # JSON integers are numbers
    {"x": [[0.1, 0.2, 0.3], [4.0], [1.0, 2.0]], "k": [2, 1, 1]},
    {"x": [[0.1, 0.2, 0.3], [4.0, 5.0, 6.0]], "k": 1, "epsilon": [0.5, 2]},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "epsilon": 3, "p": 2, "solver": "pav"},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "p": 1.3333333333333333},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "p": 1.333333333333333, "solver": "dykstra"},
    {"x": [[0.1, -0.2, 0.3]], "k": 2, "output": "magnitude"},
    {"x": [[0.1, -0.2, 0.3]], "k": 2, "output": "values", "operator": "sparse"},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "operator": "hard", "output": "values"},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "operator": "soft", "epsilon": 0.25},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "epsilon": None, "p": None, "solver": None},
    {"x": [[1.2345678901234567e30, -3e38, 0.0]], "k": 1},
    {"x": [[0.25] * 64] * 8, "k": 64},
    # The largest magnitudes that still round to a finite float32, as floats and as integers.
    {"x": [[3.4028235677973362e38, -3.4028235677973362e38]], "k": 1},
    {"x": [[2**63, -(2**63), 1]], "k": 2},
    # Derivatives, shaped like x row for row (ragged rows too; integers are numbers).
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [[1.0, 0.0]]},
    {"x": [[0.1, 0.2]], "k": 1, "cotangent": [[1.0, 0.0]], "tangent": None},
    {
        "x": [[0.1, 0.2, 0.3], [4.0]],
        "k": 1,
        "tangent": [[1, 2, 3], [-0.5]],
        "cotangent": [[0, 0, 1], [2]],
    },
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "operator": "soft", "tangent": [[3e38, -3e38, 0.0]]},
]
INVALID: list[object] = [
    {"x": [[0.1, True]], "k": 1},
    {"x": [[0.1, "2"]], "k": 1},
    {"x": [[0.1, None]], "k": 1},
    {"x": [[0.1, [2.0]]], "k": 1},
    {"x": [[]], "k": 1},
    {"x": [], "k": 1},
    {"x": [0.1, 0.2], "k": 1},
    {"x": "abc", "k": 1},
    {"x": [[0.1, 0.2]]},
    {"x": [[0.1, 0.2]], "k": 0},
    {"x": [[0.1, 0.2]], "k": 3},
    {"x": [[0.1, 0.2]], "k": True},
    {"x": [[0.1, 0.2]], "k": 2.0},
    {"x": [[0.1, 0.2]], "k": "2"},
    {"x": [[0.1, 0.2]], "k": [1, 1]},
    {"x": [[0.1, 0.2], [0.3]], "k": [1, 2]},
    {"x": [[0.1, 0.2]], "k": [True]},
    {"x": [[0.1] * 65], "k": 1},  # beyond max_n
    {"x": [[0.1]] * 9, "k": 1},  # beyond max_rows
    {"x": [[0.1, 0.2]], "k": 1, "operator": "median"},
    {"x": [[0.1, 0.2]], "k": 1, "operator": None},
    {"x": [[0.1, 0.2]], "k": 1, "operator": ["sparse"]},
    {"x": [[0.1, 0.2]], "k": 1, "output": "ranks"},
    {"x": [[0.1, 0.2]], "k": 1, "output": None},
    {"x": [[0.1, 0.2]], "k": 1, "epsilon": 0},
    {"x": [[0.1, 0.2]], "k": 1, "epsilon": -1.0},
    {"x": [[0.1, 0.2]], "k": 1, "epsilon": True},
    {"x": [[0.1, 0.2]], "k": 1, "epsilon": "0.1"},
    {"x": [[0.1, 0.2]], "k": 1, "epsilon": [0.1, 0.2]},
    {"x": [[0.1, 0.2]], "k": 1, "epsilon": [0.0]},
    {"x": [[0.1, 0.2]], "k": 1, "p": 3.0},
    {"x": [[0.1, 0.2]], "k": 1, "p": "2"},
    {"x": [[0.1, 0.2]], "k": 1, "p": True},
    {"x": [[0.1, 0.2]], "k": 1, "solver": "magic"},
    {"x": [[0.1, 0.2]], "k": 1, "solver": ["pav"]},
    {"x": [[0.1, 0.2]], "k": 1, "operator": "hard", "epsilon": 0.1},
    {"x": [[0.1, 0.2]], "k": 1, "operator": "soft", "p": 2},
    {"x": [[0.1, 0.2]], "k": 1, "operator": "soft", "solver": "pav"},
    {"x": [[1e39, 0.2]], "k": 1},  # a float32 overflow
    {"x": [[0.2, -3.4028235677973366e38]], "k": 1},  # rounds to -inf in float32
    {"x": [[10**40, 0.2]], "k": 1},
    # One-entry rows are never compared with a neighbour: the range test must still refuse them.
    {"x": [["a"]], "k": 1},
    {"x": [[None]], "k": 1},
    {"x": [[[1.0]]], "k": 1},
    {"x": [[{}]], "k": 1},
    {"x": [[[1.0], [2.0]]], "k": 1},
    {"x": [[{"a": 1}, {"b": 2}]], "k": 1},
    {"x": [["a", "b"]], "k": 1},
    {"x": [[False]], "k": 1},
    {"x": [["1.5", "2"]], "k": 1},  # NumPy would read these as numbers
    {"x": [[0.5, 1.0], ["1.5", "2"]], "k": 1},
    {"x": [[0.5, None, 1.0]], "k": 1},
    {"x": [[0.5, 1.0], [None, 1.0]], "k": 1},
    {"x": [[0.5, 1.0], [[1.0], 1.0]], "k": 1},
    {"x": [[0.5, 1.0], [0.5]], "k": [1, "1"]},
    {"x": [[0.5, 1.0]], "k": 1, "epsilon": ["0.5"]},
    {"x": [[0.5, 1.0]], "k": 1, "epsilon": 1e39},  # infinite in float32
    {"x": [[0.5, 1.0], [0.5]], "k": 1, "epsilon": [1.0, 1e39]},
    {"x": [[0.1, 0.2]], "k": 1, "extra": 1},
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [[1.0]]},  # a row shorter than x's
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [[1.0, 2.0, 3.0]]},
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [[1.0, 2.0], [3.0, 4.0]]},  # more rows than x
    {"x": [[0.1, 0.2], [0.3]], "k": 1, "cotangent": [[1.0, 2.0]]},
    {"x": [[0.1, 0.2], [0.3]], "k": 1, "cotangent": [[1.0], [2.0, 3.0]]},  # same count, swapped
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [1.0, 2.0]},
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [[1.0, "2"]]},
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [[1.0, True]]},
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [[1.0, None]]},
    {"x": [[0.1, 0.2]], "k": 1, "cotangent": [["1.5", "2"]]},
    {"x": [[0.1, 0.2]], "k": 1, "cotangent": [[1.0, 1e39]]},  # a float32 overflow
    {"x": [[0.1, 0.2]], "k": 1, "tangent": [[1.0, 2.0]], "cotangent": [[1.0]]},
    {"x": [[0.1, 0.2]], "k": 1, "tangent": "abc"},
    {"x": [[0.1, 0.2]], "k": 1, "tangent": []},
    [1, 2],
    "text",
]
RAW_INVALID = [b"", b"{", b'{"x": [[NaN]], "k": 1}', b'{"x": [[1e400]], "k": 1}', b"\xff"]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = Engine(small_settings(), available_operators())
    yield engine
    engine.close()


def strict(body: bytes, engine: Engine) -> PreparedRequest | None:
    """The strict path's result, or None where it answers an error."""
    try:
        return prepare_request(TopKRequest.model_validate_json(body), engine)
    except (ValidationError, ApiError):
        return None


def assert_same(fast: PreparedRequest, slow: PreparedRequest, engine: Engine) -> None:
    """Same key, and the same device arrays once laid out in a batch."""
    assert fast.key == slow.key
    bucket = ShapeBucket(engine.ladder.row_rung(slow.rows), slow.key.n)
    laid_fast, laid_slow = pad_batch([fast], bucket), pad_batch([slow], bucket)
    for name in ("x", "k", "epsilon", "lengths", "tangent", "cotangent"):
        a, b = getattr(laid_fast, name), getattr(laid_slow, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def agrees(
    fast: PreparedRequest | None, slow: PreparedRequest | None, body: bytes, engine: Engine
) -> bool:
    """Both paths accept ``body`` with the same layout (True) or both refuse it (False)."""
    if fast is None:
        assert slow is None, f"plainly valid but not read fast: {body!r}"
        return False
    assert slow is not None, body
    assert_same(fast, slow, engine)
    return True


def padded(body: bytes, big: bool) -> bytes:
    """The same JSON document, made bigger than the size where the reader switches to NumPy."""
    return b" " * (NUMPY_BODY_BYTES + 1) + body if big else body


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize("request_body", VALID)
def test_a_valid_body_reads_exactly_as_on_the_strict_path(
    engine: Engine, request_body: object, big: bool
) -> None:
    body = padded(json.dumps(request_body).encode(), big)
    slow = strict(body, engine)
    assert slow is not None, "the oracle must accept this body"
    fast = PlainTopKReader(engine).read(body)
    assert fast is not None, "a plainly valid body should take the fast path"
    assert_same(fast, slow, engine)


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize("request_body", [*INVALID, *RAW_INVALID])
def test_a_body_the_strict_path_refuses_is_left_to_it(
    engine: Engine, request_body: object, big: bool
) -> None:
    body = request_body if isinstance(request_body, bytes) else json.dumps(request_body).encode()
    body = padded(body, big and bool(body))
    assert strict(body, engine) is None, "the oracle must refuse this body"
    assert PlainTopKReader(engine).read(body) is None


def test_mutated_bodies_never_pass_the_fast_path_alone(engine: Engine) -> None:
    """Random mutations of valid bodies: the fast path accepts exactly the bodies the strict path
    accepts, with the same layout."""
    rng = np.random.default_rng(0)
    replacements: list[object] = [
        0, -1, 1, 2, 3, 64, 65, 0.5, 1.0, 2.0, 1.5, True, False, None, "sparse", "hard", "soft",
        "mask", "values", "pav", "", [], [1], [1, 2, 3], [[1.0]], [[0.5, 2]], {"a": 1}, 1e39,
    ]  # fmt: skip
    fields = [
        "x", "k", "operator", "output", "epsilon", "p", "solver", "tangent", "cotangent", "other",
    ]  # fmt: skip
    reader = PlainTopKReader(engine)
    accepted = 0
    for _ in range(1000):
        request = dict(VALID[rng.integers(len(VALID))])  # type: ignore[call-overload]
        for _ in range(rng.integers(1, 3)):
            request[fields[rng.integers(len(fields))]] = replacements[
                rng.integers(len(replacements))
            ]
        body = padded(json.dumps(request).encode(), big=rng.random() < 0.5)
        accepted += agrees(reader.read(body), strict(body, engine), body, engine)
    assert accepted > 30  # the mutations do exercise the accepting side too
