"""The ``/v1`` JSON reader: a request body to a :class:`~service.device.work.WorkUnit`, or a 4xx
naming every field at fault.

One reader serves every ``/v1`` route (``/v1/topk``, ``/v1/sort``, ``/v1/rank``,
``/v1/isotonic``); which fields a route takes, their types, defaults, allowed values and which
operator each applies to all come from :mod:`api.registry`. It is the only reader of these bodies:
the strict models of :mod:`api.models` describe the same contract for OpenAPI and the Python
client, and tests hold the two equal (same bodies accepted with the same work unit, same fields
named when refused) on fixed batteries and on a thousand mutated bodies per route.

Why not pydantic on the request path: for a 1×64 request its strict parse plus our cross-field
checks cost more than the device call. This reader parses with orjson once and accepts a body with
a few exact type tests per field; each test that fails is followed by a walk that says exactly
where and why (``x[2][5]``, ``k[1]``), so the error path costs more and the common path nothing.

Two facts make the common path cheap. orjson yields only finite floats and ints for JSON numbers
(it refuses ``NaN`` and ``Infinity``), so a row of numbers is checked by ``min``/``max`` against
float32's range, which raise ``TypeError`` on anything that is not a number — except booleans,
which Python counts as integers: a body holding more ``true``/``false`` tokens than its top-level
flags is checked entry by entry instead. Bodies above :data:`NUMPY_BODY_BYTES` are checked and laid
out by NumPy in one go (a zero-padded float32 matrix), once a count of quotes proves that no string
is hidden in the numbers (NumPy would read ``"1.5"`` as a number).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, get_args

import numpy as np
import orjson

from api.errors import FieldError
from api.models import FLOAT32_OVERFLOW
from api.registry import (
    DEFAULT_OPERATOR,
    DENSE_OUTPUT,
    Operator,
    Parameter,
    TopKOutput,
    route_fields,
)
from service.device.operators import BoundOperator
from service.device.work import Matrix, WorkUnit
from service.errors import ApiError
from service.ingress.checks import MAX_REPORTED, Checks, field_error, invalid, parameter_error

NUMPY_BODY_BYTES = 64 * 1024  # above this, matrices are checked and laid out by NumPy in one go
NUMBER_TYPES = frozenset({float, int})  # by exact type: bool, a subclass of int, is refused
OUTPUTS = frozenset(get_args(TopKOutput))

Laid = tuple[Matrix, list[int]]


def _is_number(value: Any) -> bool:
    return type(value) in NUMBER_TYPES


def _positive_float32(value: Any) -> bool:
    return type(value) in NUMBER_TYPES and 0 < value < FLOAT32_OVERFLOW


def _rows_of(value: Any) -> Laid | None:
    """``value`` and its row lengths if it is rows of numbers finite in float32, else None.

    The caller has made sure that no boolean hides in it; any other entry that is not a number
    makes ``min``, ``max`` or their comparison with a float raise ``TypeError``."""
    if type(value) is not list or not value:
        return None
    lengths = []
    try:
        for row in value:
            if (
                type(row) is not list
                or not row
                or not (min(row) > -FLOAT32_OVERFLOW and max(row) < FLOAT32_OVERFLOW)
            ):
                return None
            lengths.append(len(row))
    except TypeError:
        return None
    return value, lengths


def _matrix_of(value: Any) -> Laid | None:
    """The same for a big body, as a zero-padded float32 matrix: NumPy's conversion costs a third
    of ``min``/``max`` over every row. The caller has made sure no string or boolean is inside."""
    if type(value) is not list or not value:
        return None
    lengths = []
    for row in value:
        if type(row) is not list or not row:
            return None
        lengths.append(len(row))
    width = max(lengths)
    try:  # a nested list or an object raises here; null becomes NaN, refused below
        if min(lengths) == width:
            matrix = np.array(value, dtype=np.float64)
        else:
            matrix = np.zeros((len(value), width))
            for i, row in enumerate(value):
                matrix[i, : len(row)] = row
    except (TypeError, ValueError):
        return None
    if matrix.ndim != 2 or not (np.abs(matrix) < FLOAT32_OVERFLOW).all():
        return None
    with np.errstate(over="ignore"):  # |v| just above float32's largest rounds down to it
        return matrix.astype(np.float32), lengths


def _padded(rows: list[list[float]], lengths: list[int]) -> np.ndarray:
    matrix = np.zeros((len(rows), max(lengths)), dtype=np.float32)
    with np.errstate(over="ignore"):
        for i, row in enumerate(rows):
            matrix[i, : len(row)] = row
    return matrix


def _matrix_errors(name: str, value: Any) -> list[FieldError]:
    """Why ``value`` is not rows of numbers finite in float32 (empty: it is)."""
    if type(value) is not list:
        return [FieldError(field=name, reason="expected a valid array of rows (lists of numbers)")]
    if not value:
        return [FieldError(field=name, reason="needs at least 1 item (a row)")]
    errors: list[FieldError] = []
    for i, row in enumerate(value):
        if type(row) is not list:
            reason = "expected a valid array (a list of numbers)"
            errors.append(FieldError(field=f"{name}[{i}]", reason=reason))
        elif not row:
            errors.append(FieldError(field=f"{name}[{i}]", reason="a row needs at least one entry"))
        else:
            for j, entry in enumerate(row):
                if not _is_number(entry):
                    reason = f"expected a valid number, got {_json_type(entry)}"
                elif -FLOAT32_OVERFLOW < entry < FLOAT32_OVERFLOW:
                    continue
                else:
                    reason = f"{entry!r} is not a finite float32 (|value| must be below 3.4e38)"
                errors.append(FieldError(field=f"{name}[{i}][{j}]", reason=reason))
                break  # one entry per row is enough to say what is wrong with it
        if len(errors) >= MAX_REPORTED:
            break
    return errors


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _k_errors(value: Any) -> list[FieldError]:
    if value is None:
        return [FieldError(field="k", reason="required: one int, or one per row")]
    if type(value) is int:
        return [FieldError(field="k", reason=f"k={value}; it must be greater than or equal to 1")]
    if type(value) is not list:
        reason = f"expected a valid integer >= 1, or a list of them; got {value!r}"
        return [FieldError(field="k", reason=reason)]
    return [
        FieldError(field=f"k[{i}]", reason=f"expected a valid integer >= 1, got {entry!r}")
        for i, entry in enumerate(value)
        if type(entry) is not int or entry < 1
    ]


def _epsilon_errors(value: Any) -> list[FieldError]:
    reason = "expected a number greater than 0 and finite in float32 (below 3.4e38)"
    if type(value) is not list:
        return [FieldError(field="epsilon", reason=f"{reason}, or one per row; got {value!r}")]
    return [
        FieldError(field=f"epsilon[{i}]", reason=f"{reason}; got {entry!r}")
        for i, entry in enumerate(value)
        if not _positive_float32(entry)
    ]


def _matrix(
    name: str, value: Any, small: bool, exact: bool, errors: list[FieldError]
) -> Laid | None:
    """Rows of numbers and their lengths (a zero-padded float32 matrix for a big body), or None
    with the reasons appended to ``errors``."""
    if not exact:
        laid = _rows_of(value) if small else _matrix_of(value)
        if laid is not None:
            return laid
    if value is None:
        errors.append(FieldError(field=name, reason="required: a list of rows of numbers"))
        return None
    found = _matrix_errors(name, value)
    if found:
        errors += found
        return None
    lengths = [len(row) for row in value]
    return (value if small else _padded(value, lengths)), lengths


class V1Reader:
    """Reads the bodies of the ``/v1`` route that serves ``operators`` (all of one route)."""

    def __init__(
        self, checks: Checks, route: tuple[Operator, ...], offered: Mapping[str, BoundOperator]
    ) -> None:
        self.checks = checks
        self.topk = route[0].family == "topk"
        self.fields = frozenset(route_fields(route))
        self.operators = {op.name: offered[op.name] for op in route if op.name in offered}
        self.single = None if self.topk else self.operators.get(route[0].name)
        specs: dict[str, Parameter] = {}
        for operator in route:
            for parameter in operator.parameters:
                specs.setdefault(parameter.name, parameter)
        specs.pop("k", None)
        self.takes_epsilon = specs.pop("epsilon", None) is not None
        self.parameters = specs  # checked by type here; which operator takes them, in Checks
        self.flags = tuple(p.name for p in specs.values() if p.type == "bool")

    def read(self, body: bytes) -> WorkUnit:
        """The work unit of ``body``, or ``ApiError`` (422, 413) naming the fields at fault."""
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise self._not_json(body, error) from None
        return self._work_unit(request, body)

    def _not_json(self, body: bytes, error: orjson.JSONDecodeError) -> ApiError:
        """Why ``body`` is not JSON. Python's own parser takes NaN and Infinity (many clients
        send them): then the finite-number checks name the field that holds one."""
        try:
            lenient = json.loads(body)
        except (ValueError, RecursionError):
            return field_error("body", f"Invalid JSON: {error}")
        try:
            self._work_unit(lenient, body, exact=True)
        except ApiError as refused:
            return refused
        return field_error("body", f"Invalid JSON: {error}")

    def _work_unit(self, request: Any, body: bytes, exact: bool = False) -> WorkUnit:
        if type(request) is not dict:
            raise field_error("body", f"expected a JSON object, got {_json_type(request)}")
        errors: list[FieldError] = []
        if not request.keys() <= self.fields:
            errors += [
                FieldError(
                    field=name, reason="extra field not permitted: not a field of this request"
                )
                for name in request
                if name not in self.fields
            ]
        small = len(body) <= NUMPY_BODY_BYTES
        # Booleans (and, in a big body, strings) anywhere but at the top level need an exact check.
        flags = sum(type(request.get(name)) is bool for name in self.flags) if self.flags else 0
        exact = exact or body.count(b"true") + body.count(b"false") != flags
        if not small and not exact:
            strings = sum(type(value) is str for value in request.values())
            exact = body.count(b'"') != 2 * (len(request) + strings)

        x = _matrix("x", request.get("x"), small, exact, errors)
        directions = [
            _matrix(name, request[name], small, exact, errors)
            if request.get(name) is not None
            else None
            for name in ("tangent", "cotangent")
        ]
        operator = self.single
        output = DENSE_OUTPUT
        k: int | list[int] | None = None
        if self.topk:
            operator, output, k = self._topk_fields(request, errors)
        epsilon = request.get("epsilon") if self.takes_epsilon else None
        given: dict[str, Any] = {}
        if epsilon is not None:
            if not (
                _positive_float32(epsilon)
                or (type(epsilon) is list and all(map(_positive_float32, epsilon)))
            ):
                errors += _epsilon_errors(epsilon)
            given["epsilon"] = epsilon
        specs = self.parameters
        for name, value in request.items():
            parameter = specs.get(name)
            if parameter is None or (value is None and parameter.nullable):
                continue
            reason = parameter_error(parameter, value)
            if reason is not None:
                errors.append(FieldError(field=name, reason=reason))
            else:
                given[name] = value
        if errors:
            raise invalid(errors)
        assert operator is not None and x is not None  # else an error was reported above
        return self.checks.work_unit(
            operator, output, x[0], x[1], k, epsilon, given, directions[0], directions[1]
        )

    def _topk_fields(
        self, request: dict[str, Any], errors: list[FieldError]
    ) -> tuple[BoundOperator | None, str, int | list[int] | None]:
        """The operator, output and k of a ``/v1/topk`` body (errors appended, if any)."""
        name = request.get("operator", DEFAULT_OPERATOR)
        operator = self.operators.get(name) if type(name) is str else None
        if operator is None:
            offered = ", ".join(self.operators)
            reason = f"{name!r} is not an operator of this server (offered: {offered})"
            errors.append(FieldError(field="operator", reason=reason))
        output = request.get("output", "mask")
        if type(output) is not str or output not in OUTPUTS:
            reason = f"expected one of {', '.join(sorted(OUTPUTS))}, got {output!r}"
            errors.append(FieldError(field="output", reason=reason))
        k = request.get("k")
        if (
            type(k) is int
            and k >= 1
            or type(k) is list
            and all(type(v) is int and v >= 1 for v in k)
        ):
            pass
        else:
            errors += _k_errors(k)
        return operator, output, k
