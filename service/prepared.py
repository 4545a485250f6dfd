"""A validated request, ready to queue: its checked rows and per-row data, plus its batch key.

All checks that could refuse a request happen here, before it is queued, so that a batch only ever
holds requests that can be computed: one bad request never fails its batch-mates.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from api.errors import FieldError
from api.models import DenseRequest, IsotonicRequest, SoftSortRequest, TopKRequest
from api.validation import per_row_k, size_errors, validate_dense_request, validate_topk_request
from service.engine import Engine
from service.errors import ApiError
from service.kernels import Derivative, Static

P_TOLERANCE = 1e-9  # 4/3 sent as 1.3333333333333333 or 1.333333333333333 is the same p


class BatchKey(NamedTuple):
    """Requests with equal keys can share a device call: same kernel, same padded row length.

    A named tuple, not a dataclass: it is hashed several times per request, and a tuple hashes
    in C."""

    operator: str
    output: str
    derivative: Derivative
    static: Static
    n: int


class PreparedRequest(NamedTuple):
    """One checked request, still as the lists it came in: NumPy starts once per batch.

    Every number is known to be finite in float32, every k fits its row; the batch's host work
    (:func:`~service.assembly.pad_batch`) lays all requests of a batch out in one go, which for
    small requests costs far less than one set of arrays per request.
    """

    key: BatchKey
    x: list[list[float]] | np.ndarray  # a big plain body comes as a zero-padded float32 matrix
    k: list[int]
    epsilon: float | list[float]  # one for every row, or one per row
    lengths: list[int]
    tangent: list[list[float]] | np.ndarray | None  # shaped like x, and laid out like it
    cotangent: list[list[float]] | np.ndarray | None

    @property
    def rows(self) -> int:
        return len(self.lengths)


# Above this magnitude a float rounds to infinity in float32 (float32's largest value plus half a
# unit in the last place; the tie rounds to even, which is infinity).
FLOAT32_OVERFLOW = 3.4028235677973366e38


def fits_float32(row: list[float]) -> bool:
    """Whether every number of ``row`` stays finite in float32 (``TypeError`` for a non-number;
    a NaN can hide from ``min`` and ``max``, so callers that might hold one check it apart)."""
    return min(row) > -FLOAT32_OVERFLOW and max(row) < FLOAT32_OVERFLOW


def check_float32(rows: list[list[float]], field: str) -> None:
    """422 naming the first entry of ``rows`` that overflows float32, if any."""
    for i, row in enumerate(rows):
        if fits_float32(row) and not math.isnan(sum(row)):  # min and max skip a NaN
            continue
        j = next(j for j, value in enumerate(row) if not abs(value) < FLOAT32_OVERFLOW)
        reason = f"{row[j]!r} is not a finite float32 (|value| must be below 3.4e38)"
        raise ApiError(
            422, "invalid request", [FieldError(field=f"{field}[{i}][{j}]", reason=reason)]
        )


def snap_p(static: Static, engine: Engine) -> Static:
    """``p`` replaced by the allowed value it equals (each allowed p is its own executable)."""
    knobs = dict(static)
    if "p" not in knobs:
        return static
    for allowed in engine.settings.p_values:
        if math.isclose(knobs["p"], allowed, rel_tol=P_TOLERANCE, abs_tol=P_TOLERANCE):
            knobs["p"] = allowed
            return tuple(sorted(knobs.items()))
    allowed_text = ", ".join(repr(v) for v in engine.settings.p_values)
    reason = f"p={knobs['p']!r} is not one of {allowed_text}"
    raise ApiError(422, "invalid request", [FieldError(field="p", reason=reason)])


def _check_operator(engine: Engine, operator: str, output: str, errors: list[FieldError]) -> None:
    available = engine.operators.get(operator)
    if available is None:
        offered = ", ".join(sorted(engine.operators))
        reason = f"{operator!r} is not available in this build (offered: {offered})"
        errors.append(FieldError(field="operator", reason=reason))
    elif output not in available.functions:
        offered = ", ".join(available.functions)
        reason = f"operator {operator!r} has no output {output!r} (offered: {offered})"
        errors.append(FieldError(field="output", reason=reason))


def layout(
    engine: Engine,
    operator: str,
    output: str,
    static: Static,
    x: list[list[float]] | np.ndarray,
    ks: list[int],
    epsilon: float | list[float] | None,
    tangent: list[list[float]] | np.ndarray | None = None,
    cotangent: list[list[float]] | np.ndarray | None = None,
    lengths: list[int] | None = None,
) -> PreparedRequest:
    """A checked request with its batch key (its rows' ``n`` bucket and kernel)."""
    if lengths is None:
        lengths = [len(row) for row in x]
    if epsilon is None:
        epsilon = float(engine.operators[operator].defaults.get("epsilon", 1.0))
    largest = max(epsilon) if isinstance(epsilon, list) else epsilon
    if not largest < FLOAT32_OVERFLOW:  # positive is checked already; infinity is not allowed
        reason = f"{largest!r} is not a finite float32 (it must be below 3.4e38)"
        raise ApiError(422, "invalid request", [FieldError(field="epsilon", reason=reason)])
    derivative = engine.derivative_of(tangent is not None, cotangent is not None)
    key = BatchKey(operator, output, derivative, static, engine.ladder.n_rung(max(lengths)))
    return PreparedRequest(key, x, ks, epsilon, lengths, tangent, cotangent)


def _layout(
    engine: Engine,
    operator: str,
    output: str,
    static: Static,
    request: TopKRequest | DenseRequest,
    ks: list[int],
) -> PreparedRequest:
    epsilon = getattr(request, "epsilon", None)
    for field in ("x", "tangent", "cotangent"):
        rows = getattr(request, field)
        if rows is not None:
            check_float32(rows, field)
    return layout(
        engine, operator, output, static, request.x, ks, epsilon, request.tangent, request.cotangent
    )


def check_topk_request(request: TopKRequest, engine: Engine) -> tuple[Static, list[int]]:
    """Check ``request`` against the server's limits and operators (413/422 naming the fields);
    its compile-time keywords and one k per row. The float32 range of the numbers is not checked
    here (see :func:`prepare_request`)."""
    limits = engine.limits
    too_large = size_errors(request, limits)
    if too_large:
        raise ApiError(413, "request too large", too_large)
    errors = validate_topk_request(request, limits)
    _check_operator(engine, request.operator, request.output, errors)
    if not errors and engine.operators[request.operator].spec.kind != "topk":
        errors.append(FieldError(field="operator", reason=f"{request.operator!r} is not a top-k"))
    if errors:
        raise ApiError(422, "invalid request", errors)
    static = engine.static_for(request.operator, p=request.p, solver=request.solver)
    return snap_p(static, engine), per_row_k(request)


def prepare_request(request: TopKRequest, engine: Engine) -> PreparedRequest:
    """Check ``request`` against the server's limits and operators, then lay it out for the device."""
    static, ks = check_topk_request(request, engine)
    return _layout(engine, request.operator, request.output, static, request, ks)


def prepare_dense_request(operator: str, request: DenseRequest, engine: Engine) -> PreparedRequest:
    """The same for ``/v1/sort``, ``/v1/rank`` and ``/v1/isotonic`` (one value per entry)."""
    limits = engine.limits
    too_large = size_errors(request, limits)
    if too_large:
        raise ApiError(413, "request too large", too_large)
    errors = validate_dense_request(request)
    if operator not in engine.operators:
        errors.append(FieldError(field="path", reason=f"{operator!r} is not in this build"))
    if errors:
        raise ApiError(404 if operator not in engine.operators else 422, "invalid request", errors)
    given: dict[str, object]
    if isinstance(request, SoftSortRequest):
        given = {"descending": request.descending, "regularization": request.regularization}
    else:
        assert isinstance(request, IsotonicRequest)
        given = {"increasing": request.increasing, "solver": request.solver}
    static = engine.static_for(operator, **given)
    return _layout(engine, operator, "values", static, request, [1] * len(request.x))
