"""Cross-field rules of ``POST /v1/topk`` that a schema cannot state, each naming its field.

Two kinds of refusal: a request larger than the server's :class:`~api.limits.Limits` (HTTP 413, see
:func:`size_errors`) and a request that is well-typed but meaningless (HTTP 422, see
:func:`validate_topk_request`). Both return every problem found, not only the first.
"""

from __future__ import annotations

from api.errors import FieldError
from api.limits import Limits
from api.models import DenseRequest, TopKRequest

# Which optional parameters mean something for which operator; sending another one is a mistake.
OPERATOR_PARAMETERS: dict[str, frozenset[str]] = {
    "sparse": frozenset({"epsilon", "p", "solver"}),
    "soft": frozenset({"epsilon"}),
    "hard": frozenset(),
}

_MAX_REPORTED = 20  # a 10 000-row request with every k wrong should not produce a 1 MB error body


def size_errors(request: TopKRequest | DenseRequest, limits: Limits) -> list[FieldError]:
    """Problems that make the request too large for this server (answer 413)."""
    errors: list[FieldError] = []
    if len(request.x) > limits.max_rows:
        errors.append(
            FieldError(field="x", reason=f"{len(request.x)} rows; at most {limits.max_rows}")
        )
    longest = max((len(row) for row in request.x), default=0)
    if len(request.x) * longest > limits.max_entries:
        reason = f"{len(request.x)} rows of up to {longest} entries; at most {limits.max_entries}"
        errors.append(FieldError(field="x", reason=reason))
    for i, row in enumerate(request.x):
        if len(row) > limits.max_n:
            errors.append(
                FieldError(field=f"x[{i}]", reason=f"{len(row)} entries; at most {limits.max_n}")
            )
            if len(errors) >= _MAX_REPORTED:
                break
    return errors


def validate_topk_request(request: TopKRequest, limits: Limits) -> list[FieldError]:
    """Problems that make a well-typed request meaningless (answer 422); empty if it is fine."""
    errors: list[FieldError] = []
    rows = len(request.x)
    lengths = [len(row) for row in request.x]
    for i, n in enumerate(lengths):
        if n == 0:
            errors.append(FieldError(field=f"x[{i}]", reason="a row needs at least one entry"))

    ks = _per_row(request.k, rows)
    if ks is None:
        errors.append(
            FieldError(
                field="k", reason=f"give one k, or one per row ({rows}); got {_len(request.k)}"
            )
        )
    else:
        for i, (k, n) in enumerate(zip(ks, lengths, strict=True)):
            field = f"k[{i}]" if isinstance(request.k, list) else "k"
            if k > limits.max_k:
                errors.append(FieldError(field=field, reason=f"k={k} exceeds max_k={limits.max_k}"))
            elif n and k > n:
                errors.append(
                    FieldError(field=field, reason=f"k={k} exceeds the length {n} of row x[{i}]")
                )

    if isinstance(request.epsilon, list) and len(request.epsilon) != rows:
        errors.append(
            FieldError(
                field="epsilon",
                reason=f"give one epsilon, or one per row ({rows}); got {len(request.epsilon)}",
            )
        )

    applicable = OPERATOR_PARAMETERS[request.operator]
    for name in ("epsilon", "p", "solver"):
        if getattr(request, name) is not None and name not in applicable:
            errors.append(
                FieldError(field=name, reason=f"does not apply to operator {request.operator!r}")
            )

    for name in ("tangent", "cotangent"):
        other: list[list[float]] | None = getattr(request, name)
        if other is not None:
            errors.extend(_same_shape(name, other, lengths))
    return errors[:_MAX_REPORTED]


def validate_dense_request(request: DenseRequest) -> list[FieldError]:
    """Problems of a sort/rank/isotonic request that its schema cannot state (answer 422)."""
    errors = [
        FieldError(field=f"x[{i}]", reason="a row needs at least one entry")
        for i, row in enumerate(request.x)
        if not row
    ]
    epsilon = getattr(request, "epsilon", None)
    if isinstance(epsilon, list) and len(epsilon) != len(request.x):
        errors.append(
            FieldError(
                field="epsilon",
                reason=f"give one epsilon, or one per row ({len(request.x)}); got {len(epsilon)}",
            )
        )
    lengths = [len(row) for row in request.x]
    for name in ("tangent", "cotangent"):
        other: list[list[float]] | None = getattr(request, name)
        if other is not None:
            errors.extend(_same_shape(name, other, lengths))
    return errors[:_MAX_REPORTED]


def per_row_k(request: TopKRequest) -> list[int]:
    """``k`` as one int per row (call after :func:`validate_topk_request` found nothing)."""
    ks = _per_row(request.k, len(request.x))
    if ks is None:
        raise ValueError("k has the wrong number of entries; validate the request first")
    return ks


def _per_row(k: int | list[int], rows: int) -> list[int] | None:
    if isinstance(k, int):
        return [k] * rows
    return list(k) if len(k) == rows else None


def _len(value: int | list[int]) -> int:
    return 1 if isinstance(value, int) else len(value)


def _same_shape(name: str, other: list[list[float]], lengths: list[int]) -> list[FieldError]:
    if len(other) != len(lengths):
        return [
            FieldError(field=name, reason=f"{len(other)} rows; x has {len(lengths)} (same shape)")
        ]
    return [
        FieldError(field=f"{name}[{i}]", reason=f"{len(row)} entries; x[{i}] has {n}")
        for i, (row, n) in enumerate(zip(other, lengths, strict=True))
        if len(row) != n
    ]
