"""The ``/v1`` reader against an independent oracle: the strict pydantic models of :mod:`api.models`
and the cross-field rules of :mod:`api.validation`, which describe the same contract.

For every body (fixed batteries and a thousand mutations per family) both accept it with the same
work unit, or both refuse it with the same status, and the reader names only fields the oracle
names too (the reader reports the first bad entry of a row, the oracle every one).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from api.errors import field_path
from api.models import IsotonicRequest, SoftSortRequest, TopKRequest
from api.registry import OPERATORS
from api.validation import per_row_k, size_errors, validate_dense_request, validate_topk_request
from service.device.assembly import pad_batch
from service.device.buckets import ShapeBucket
from service.device.operators import bind_operators
from service.device.work import WorkUnit
from service.errors import ApiError
from service.ingress.checks import Checks
from service.ingress.v1_reader import NUMPY_BODY_BYTES, V1Reader
from tests.service.serving import small_settings

VALID: list[object] = [
    {"x": [[0.5, -1.0, 2.0, 3.5]], "k": 2},
    {"x": [[1, 2, 3]], "k": 1},  # JSON integers are numbers
    {"x": [[0.1, 0.2, 0.3], [4.0], [1.0, 2.0]], "k": [2, 1, 1]},
    {"x": [[0.1, 0.2, 0.3], [4.0, 5.0, 6.0]], "k": 1, "epsilon": [0.5, 2]},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "epsilon": 3, "p": 2, "solver": "pav"},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "p": 1.3333333333333333},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "p": 1.333333333333333, "solver": "threshold"},
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "p": 2.0000000000000004, "solver": "dykstra"},
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
    # Large directions (a tangent near 3e38 would overflow the JVP: a 422, tests/service/ingress/test_domain.py).
    {"x": [[0.1, 0.2, 0.3]], "k": 2, "operator": "soft", "tangent": [[1e30, -1e30, 0.0]]},
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
    {"x": [[0.1, 0.2]], "k": 1, "p": 1.3333333333333333, "solver": "dykstra"},  # p=2 only
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

ROWS = [[0.5, -1.0, 2.0], [4.0], [1, 2]]
DENSE_VALID: dict[str, list[dict[str, object]]] = {
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
DENSE_VALID["rank"] = DENSE_VALID["sort"]
DENSE_INVALID: dict[str, list[object]] = {
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
DENSE_INVALID["rank"] = DENSE_INVALID["sort"]

MODELS: dict[str, type[Any]] = {
    "topk": TopKRequest, "sort": SoftSortRequest, "rank": SoftSortRequest,
    "isotonic": IsotonicRequest,
}  # fmt: skip


class Refused(NamedTuple):
    status: int
    fields: set[str]


class Readers(NamedTuple):
    checks: Checks
    readers: dict[str, V1Reader]


@pytest.fixture(scope="module")
def readers() -> Readers:
    settings = small_settings()
    offered = bind_operators(settings.p_values)
    checks = Checks(settings, offered)
    routes: dict[str, tuple[Any, ...]] = {}
    for operator in OPERATORS:
        name = "topk" if operator.family == "topk" else operator.name
        routes[name] = (*routes.get(name, ()), operator)
    return Readers(checks, {name: V1Reader(checks, ops, offered) for name, ops in routes.items()})


def pydantic_fields(error: ValidationError) -> set[str]:
    """The fields of pydantic's errors; union member tags (``k.int``) are dropped."""
    fields = set()
    for item in error.errors(include_url=False):
        location = item["loc"]
        parts = [location[0], *(p for p in location[1:] if isinstance(p, int))] if location else []
        fields.add(field_path(parts))
    return fields


def oracle(route: str, body: bytes, checks: Checks) -> WorkUnit | Refused:
    """What the strict models and api.validation make of ``body``."""
    try:
        parsed = MODELS[route].model_validate_json(body)
    except ValidationError as error:
        return Refused(422, pydantic_fields(error))
    too_large = size_errors(parsed, checks.limits)
    if too_large:
        return Refused(413, {e.field for e in too_large})
    if route == "topk":
        errors = validate_topk_request(parsed, checks.limits)
        operator = checks.operators[parsed.operator]
        if parsed.output not in operator.functions:
            errors.append(type(errors[0])(field="output", reason="") if errors else None)  # type: ignore[arg-type]
    else:
        errors = validate_dense_request(parsed)
        operator = checks.operators[route]
    errors = [e for e in errors if e is not None]
    if errors:
        return Refused(422, {e.field for e in errors})
    names = {p.name for p in operator.spec.parameters}
    given = {
        name: getattr(parsed, name)
        for name in names - {"k"}
        if name in type(parsed).model_fields and getattr(parsed, name) is not None
    }
    if route != "topk":  # the strict models give every flag its default value
        given = {
            n: v
            for n, v in given.items()
            if n not in {"descending", "regularization", "increasing", "solver"}
            or v != operator.spec.parameter(n).default
        }  # type: ignore[union-attr]
    try:
        return checks.work_unit(
            operator,
            getattr(parsed, "output", "values"),
            [list(row) for row in parsed.x],
            [len(row) for row in parsed.x],
            per_row_k(parsed) if route == "topk" else None,
            parsed.epsilon if hasattr(parsed, "epsilon") else None,
            given,
            None if parsed.tangent is None else (parsed.tangent, [len(r) for r in parsed.tangent]),
            None
            if parsed.cotangent is None
            else (parsed.cotangent, [len(r) for r in parsed.cotangent]),
        )
    except ApiError as error:
        return Refused(error.status, {e.field for e in error.body.errors})


def read(route: str, body: bytes, readers: Readers) -> WorkUnit | Refused:
    try:
        return readers.readers[route].read(body)
    except ApiError as error:
        refused = Refused(error.status, {e.field for e in error.body.errors})
    assert refused.fields, "a refusal names at least one field"
    return refused


def assert_same(fast: WorkUnit, slow: WorkUnit, checks: Checks) -> None:
    """Same key, and the same device arrays once laid out in a batch."""
    assert fast.key == slow.key
    bucket = ShapeBucket(checks.ladder.row_rung(slow.rows), slow.key.n)
    laid_fast, laid_slow = pad_batch([fast], bucket), pad_batch([slow], bucket)
    for name in ("x", "k", "epsilon", "lengths", "tangent", "cotangent"):
        a, b = getattr(laid_fast, name), getattr(laid_slow, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def orjson_refuses(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return True
    return False


def agrees(route: str, body: bytes, readers: Readers) -> bool:
    """Both accept ``body`` with the same work unit (True), or both refuse it alike (False)."""
    got, expected = read(route, body, readers), oracle(route, body, readers.checks)
    if isinstance(expected, Refused):
        assert isinstance(got, Refused), f"the reader accepted a body the oracle refuses: {body!r}"
        assert got.status == expected.status, (body, got, expected)
        if got.fields == {"body"} and orjson_refuses(body):
            return False  # e.g. NaN: no JSON for orjson, a non-finite number for pydantic
        assert got.fields and got.fields <= expected.fields, (body, got, expected)
        return False
    assert not isinstance(got, Refused), f"the reader refused a valid body: {body!r} {got}"
    assert_same(got, expected, readers.checks)
    return True


def padded(body: bytes, big: bool) -> bytes:
    """The same JSON document, made bigger than the size where the reader switches to NumPy."""
    return b" " * (NUMPY_BODY_BYTES + 1) + body if big else body


def encoded(body: object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


TOPK_CASES = [("topk", body) for body in VALID]
DENSE_CASES = [(route, body) for route, bodies in DENSE_VALID.items() for body in bodies]
TOPK_BAD = [("topk", body) for body in [*INVALID, *RAW_INVALID]]
DENSE_BAD = [(route, body) for route, bodies in DENSE_INVALID.items() for body in bodies]


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize(("route", "request_body"), TOPK_CASES + DENSE_CASES)
def test_a_valid_body_reads_as_the_oracle_reads_it(
    readers: Readers, route: str, request_body: object, big: bool
) -> None:
    body = padded(encoded(request_body), big)
    assert not isinstance(oracle(route, body, readers.checks), Refused), "the oracle accepts it"
    assert agrees(route, body, readers)


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize(("route", "request_body"), TOPK_BAD + DENSE_BAD)
def test_a_bad_body_is_refused_as_the_oracle_refuses_it(
    readers: Readers, route: str, request_body: object, big: bool
) -> None:
    body = encoded(request_body)
    body = padded(body, big and bool(body))
    assert isinstance(oracle(route, body, readers.checks), Refused), "the oracle refuses it"
    assert not agrees(route, body, readers)


REPLACEMENTS: dict[str, list[object]] = {
    "topk": [
        0, -1, 1, 2, 3, 64, 65, 0.5, 1.0, 2.0, 1.5, True, False, None, "sparse", "hard", "soft",
        "mask", "values", "pav", "", [], [1], [1, 2, 3], [[1.0]], [[0.5, 2]], {"a": 1}, 1e39,
    ],
    "dense": [
        0, -1, 1, 0.5, 2.0, True, False, None, "l2", "kl", "pav", "dykstra", "", [], [1],
        [0.5, 1.0, 2.0], [[1.0]], [[0.5, 2, 1.0]], [[1.0], [2.0], [3.0]], {"a": 1}, 1e39,
    ],
}  # fmt: skip
FIELDS: dict[str, list[str]] = {
    "topk": [
        "x", "k", "operator", "output", "epsilon", "p", "solver", "tangent", "cotangent", "other",
    ],
    "dense": [
        "x", "epsilon", "descending", "regularization", "increasing", "solver", "tangent",
        "cotangent", "other",
    ],
}  # fmt: skip


@pytest.mark.parametrize("family", ["topk", "dense"])
def test_mutated_bodies_are_read_as_the_oracle_reads_them(readers: Readers, family: str) -> None:
    rng = np.random.default_rng(0)
    replacements, fields = REPLACEMENTS[family], FIELDS[family]
    accepted = 0
    for _ in range(1000):
        if family == "topk":
            route, request = "topk", dict(VALID[rng.integers(len(VALID))])  # type: ignore[call-overload]
        else:
            route = ("sort", "rank", "isotonic")[rng.integers(3)]
            request = dict(DENSE_VALID[route][rng.integers(len(DENSE_VALID[route]))])
        for _ in range(rng.integers(1, 3)):
            request[fields[rng.integers(len(fields))]] = replacements[
                rng.integers(len(replacements))
            ]
        body = padded(json.dumps(request).encode(), big=rng.random() < 0.5)
        accepted += agrees(route, body, readers)
    assert accepted > 30  # the mutations do exercise the accepting side too
