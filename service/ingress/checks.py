"""The checks every request passes before it is queued, whichever wire format it came in.

A reader (the ``/v1`` JSON reader, the OIP codec) checks what its format can get wrong — JSON
types, tensor datatypes and shapes — and hands typed values to :meth:`Checks.work_unit`, which
checks them against this server: sizes (413), then the meaning of the request (422: k against its
row, parameters the operator does not take, derivatives not shaped like ``x``, a ``p`` the server
does not offer), and returns the :class:`~service.device.work.WorkUnit` the device side runs. Every
refusal names its field; all of them are found before a request is queued, so a batch only ever
holds requests that can be computed.

The happy path is a handful of comparisons (a 1×64 request pays about a microsecond here); the
reasons are worked out only once something is wrong.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

import numpy as np

from api.errors import FieldError
from api.models import FLOAT32_OVERFLOW
from api.registry import Parameter
from core import (
    MASK_MAX_RATIO_LOG2,
    derivative_in_range,
    domain_limits,
    domain_violation,
    min_row_scale,
)
from service.device.buckets import BucketLadder
from service.device.operators import BoundOperator
from service.device.variants import refusal
from service.device.work import BatchKey, Derivative, Matrix, Static, WorkUnit, derivative_of
from service.errors import ApiError
from service.settings import Settings

P_TOLERANCE = 1e-9  # 4/3 sent as 1.3333333333333333 or 1.333333333333333 is the same p
MAX_REPORTED = 20  # a 10 000-row request with every k wrong should not produce a 1 MB error body
_STATICS_KEPT = 256  # clients choose p: bound how many distinct knob sets are remembered
# An epsilon at least this large keeps every float32 row within the sparse mask's exact range
# (max|x| / epsilon <= 2^MASK_MAX_RATIO_LOG2), so the rows need not be scanned for it.
_RATIO_FREE_EPSILON = FLOAT32_OVERFLOW / 2.0**MASK_MAX_RATIO_LOG2


def invalid(errors: list[FieldError], status: int = 422) -> ApiError:
    summary = "request too large" if status == 413 else "invalid request"
    return ApiError(status, summary, errors[:MAX_REPORTED])


def field_error(field: str, reason: str, status: int = 422) -> ApiError:
    return invalid([FieldError(field=field, reason=reason)], status)


class Checks:
    """The server-side checks of one server (its limits, operators and bucket ladder)."""

    def __init__(self, settings: Settings, operators: Mapping[str, BoundOperator]) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.operators = operators
        self.ladder = BucketLadder(settings.row_buckets, settings.n_buckets)
        self._n_rungs = settings.n_buckets
        # Per operator, what every request of it looks up (computed once, read per request):
        self._names = {n: frozenset(p.name for p in op.spec.parameters) for n, op in operators.items()}  # fmt: skip
        self._compile_time = {name: op.spec.compile_time for name, op in operators.items()}
        self._epsilon = {
            name: 1.0 if (e := op.spec.parameter("epsilon")) is None else float(e.default)  # type: ignore[arg-type]
            for name, op in operators.items()
        }
        self._statics: dict[tuple[str, tuple[Any, ...]], Static] = {}
        self._domain_checked = frozenset(operators) & frozenset(domain_limits())
        # The outputs in the units of x, which a row of subnormal scale cannot have (asked of
        # the core with such a row rather than listed twice).
        tiny = min_row_scale() / 2
        self._x_units = frozenset(
            (name, output)
            for name, op in operators.items()
            for output in op.functions
            if domain_violation(name, output, max_abs_x=tiny, epsilon=1.0) is not None
        )

    def _check_domain(
        self,
        name: str,
        output: str,
        static: Static,
        x: Matrix,
        lengths: list[int],
        epsilon: float | list[float],
        directions: tuple[Matrix | None, Matrix | None],
    ) -> None:
        """422 for the inputs the core cannot compute exactly (``core.domain_violation``: a row
        whose outputs in x's units would be subnormal, a sparse mask whose ``max|x| / epsilon``
        is beyond its units, a derivative that overflows float32), naming the row's field.

        The common request costs a comparison: rows are scanned only for the outputs in x's
        units, for an ``epsilon`` small enough that some float32 row could exceed the ratio, and
        for derivatives."""
        epsilons = epsilon if type(epsilon) is list else None
        smallest = min(epsilons) if epsilons is not None else float(epsilon)  # type: ignore[arg-type]
        ratio_possible = name == "sparse" and smallest < _RATIO_FREE_EPSILON
        derivative = directions[0] is not None or directions[1] is not None
        if not (ratio_possible or derivative or (name, output) in self._x_units):
            return
        knobs = dict(static)
        p = float(knobs.get("p", 2.0))
        scales = _row_max_abs(x)
        errors: list[FieldError] = []
        for i, scale in enumerate(scales):
            eps = epsilons[i] if epsilons is not None else float(epsilon)  # type: ignore[arg-type]
            refused = domain_violation(name, output, max_abs_x=scale, epsilon=eps)
            if refused is not None:
                field, reason = refused
                field = f"x[{i}]" if field == "x" else (f"epsilon[{i}]" if epsilons else field)
                errors.append(FieldError(field=field, reason=f"{reason} (row {i})"))
        for label, direction in zip(("tangent", "cotangent"), directions, strict=True):
            if direction is None:
                continue
            for i, size in enumerate(_row_max_abs(direction)):
                eps = epsilons[i] if epsilons is not None else float(epsilon)  # type: ignore[arg-type]
                if not derivative_in_range(size, eps, max_abs_x=scales[i], n=lengths[i], p=p):
                    reason = (
                        f"|{label}| up to {size:.3g} with epsilon={eps:.3g}: the derivative would"
                        " overflow float32 (it scales like |tangent| / epsilon)"
                    )
                    errors.append(FieldError(field=f"{label}[{i}]", reason=reason))
        if errors:
            raise invalid(errors)

    def work_unit(
        self,
        operator: BoundOperator,
        output: str,
        x: Matrix,
        lengths: list[int],
        k: int | list[int] | None,
        epsilon: float | list[float] | None,
        given: Mapping[str, Any],
        tangent: tuple[Matrix, list[int]] | None = None,
        cotangent: tuple[Matrix, list[int]] | None = None,
    ) -> WorkUnit:
        """The work unit of a typed request, or ``ApiError`` (413, then 422) naming the fields.

        ``given`` holds the operator's other parameters the client set (not null); ``tangent`` and
        ``cotangent`` come with their row lengths, which must be ``x``'s.
        """
        limits = self.limits
        rows = len(lengths)
        longest = max(lengths)
        if rows > limits.max_rows or longest > limits.max_n or rows * longest > limits.max_entries:
            raise invalid(self._size_errors(lengths), 413)
        name = operator.name
        if type(k) is int:  # one k for every row: the shortest row bounds it
            ks: Any = [k] * rows
            ok = k <= limits.max_k and k <= (longest if rows == 1 else min(lengths))
        elif k is None:
            ks, ok = [1] * rows, True
        else:
            ks = k
            ok = (
                type(k) is list
                and len(k) == rows
                and max(k) <= limits.max_k
                and all(map(int.__le__, k, lengths))
            )
        ok = (
            ok
            and (type(epsilon) is not list or len(epsilon) == rows)
            and (not given or given.keys() <= self._names[name])
            and output in operator.functions
            and (tangent is None or tangent[1] == lengths)
            and (cotangent is None or cotangent[1] == lengths)
        )
        if not ok:
            raise invalid(
                self._meaning_errors(
                    operator, output, lengths, k, epsilon, given, tangent, cotangent
                )
            )
        if tangent is None and cotangent is None:
            derivative: Derivative = "none"
            directions: tuple[Matrix | None, Matrix | None] = (None, None)
        else:
            derivative = derivative_of(tangent is not None, cotangent is not None)
            directions = (
                None if tangent is None else tangent[0],
                None if cotangent is None else cotangent[0],
            )
        rungs = self._n_rungs
        key = BatchKey(
            name,
            output,
            derivative,
            self.static(operator, given),
            rungs[bisect_left(rungs, longest)],
        )
        if epsilon is None:
            epsilon = self._epsilon[name]
        if name in self._domain_checked:
            self._check_domain(name, output, key.static, x, lengths, epsilon, directions)
        return WorkUnit(key, x, ks, epsilon, lengths, *directions)

    def static(self, operator: BoundOperator, given: Mapping[str, Any]) -> Static:
        """The kernel's compile-time keywords for ``given`` (422 naming a ``p`` not offered, or a
        knob the core does not compute with the others, e.g. ``solver`` dykstra with p != 2)."""
        name = operator.name
        key = (name, tuple(map(given.get, self._compile_time[name])) if given else ())
        static = self._statics.get(key)
        if static is None:
            static = operator.static(given)
            knobs = dict(static)
            if "p" in knobs:
                knobs["p"] = self._offered_p(knobs["p"])
                static = tuple(sorted(knobs.items()))
            refused = refusal(name, static)
            if refused is not None:
                raise field_error(*refused)
            if len(self._statics) < _STATICS_KEPT:
                self._statics[key] = static
        return static

    def _offered_p(self, p: float) -> float:
        """``p`` as the offered value it equals (each offered p is its own executable)."""
        for allowed in self.settings.p_values:
            if abs(p - allowed) <= P_TOLERANCE:  # as the OpenAPI document states it
                return allowed
        offered = ", ".join(repr(v) for v in self.settings.p_values)
        raise field_error("p", f"p={p!r} is not one of {offered}")

    # ------------------------------------------------------------------ reasons, once refused

    def _size_errors(self, lengths: list[int]) -> list[FieldError]:
        limits = self.limits
        errors: list[FieldError] = []
        if len(lengths) > limits.max_rows:
            reason = f"{len(lengths)} rows; at most {limits.max_rows}"
            errors.append(FieldError(field="x", reason=reason))
        entries = len(lengths) * max(lengths)
        if entries > limits.max_entries:
            reason = (
                f"{len(lengths)} rows of up to {max(lengths)} entries ({entries}); at most"
                f" {limits.max_entries} entries (rows x longest row)"
            )
            errors.append(FieldError(field="x", reason=reason))
        errors += [
            FieldError(field=f"x[{i}]", reason=f"{n} entries; at most {limits.max_n}")
            for i, n in enumerate(lengths)
            if n > limits.max_n
        ]
        return errors

    def _meaning_errors(
        self,
        operator: BoundOperator,
        output: str,
        lengths: list[int],
        k: int | list[int] | None,
        epsilon: float | list[float] | None,
        given: Mapping[str, Any],
        tangent: tuple[Matrix, list[int]] | None,
        cotangent: tuple[Matrix, list[int]] | None,
    ) -> list[FieldError]:
        rows = len(lengths)
        errors: list[FieldError] = []
        if output not in operator.functions:
            offered = ", ".join(operator.functions)
            reason = f"operator {operator.name!r} has no output {output!r} (offered: {offered})"
            errors.append(FieldError(field="output", reason=reason))
        if k is not None:
            ks = [k] * rows if type(k) is int else k
            if type(ks) is not list or len(ks) != rows:
                given_count = 1 if type(k) is int else len(k)  # type: ignore[arg-type]
                reason = f"give one k, or one per row ({rows}); got {given_count}"
                errors.append(FieldError(field="k", reason=reason))
            else:
                max_k = self.limits.max_k
                for i, (value, n) in enumerate(zip(ks, lengths, strict=True)):
                    field = f"k[{i}]" if type(k) is list else "k"
                    if value > max_k:
                        reason = f"k={value} exceeds max_k={max_k}"
                        errors.append(FieldError(field=field, reason=reason))
                    elif value > n:
                        reason = f"k={value} exceeds the length {n} of row x[{i}]"
                        errors.append(FieldError(field=field, reason=reason))
        if type(epsilon) is list and len(epsilon) != rows:
            reason = f"give one epsilon, or one per row ({rows}); got {len(epsilon)}"
            errors.append(FieldError(field="epsilon", reason=reason))
        names = self._names[operator.name]
        errors += [
            FieldError(field=name, reason=f"does not apply to operator {operator.name!r}")
            for name in given
            if name not in names
        ]
        for name, direction in (("tangent", tangent), ("cotangent", cotangent)):
            if direction is not None and direction[1] != lengths:
                errors += _shape_errors(name, direction[1], lengths)
        return errors


def _shape_errors(name: str, other: list[int], lengths: list[int]) -> list[FieldError]:
    if len(other) != len(lengths):
        reason = f"{len(other)} rows; x has {len(lengths)} (same shape)"
        return [FieldError(field=name, reason=reason)]
    return [
        FieldError(field=f"{name}[{i}]", reason=f"{m} entries; x[{i}] has {n}")
        for i, (m, n) in enumerate(zip(other, lengths, strict=True))
        if m != n
    ]


def _row_max_abs(x: Matrix) -> list[float]:
    """The largest ``|x|`` of every row."""
    if isinstance(x, np.ndarray):
        return np.max(np.abs(x), axis=-1, initial=0.0).astype(float).tolist()
    return [max(max(row), -min(row)) if row else 0.0 for row in x]


def finite_float32(value: float) -> bool:
    """Whether a number stays finite in float32."""
    return -FLOAT32_OVERFLOW < value < FLOAT32_OVERFLOW


def parameter_error(parameter: Parameter, value: Any) -> str | None:
    """Why ``value`` is not a value of ``parameter``'s type (None: it is). Numbers are checked by
    exact type: a boolean is not a number here."""
    if parameter.type == "bool":
        return None if type(value) is bool else f"expected true or false, got {value!r}"
    if parameter.type == "float":
        return None if type(value) in (int, float) else f"expected a number, got {value!r}"
    if parameter.type == "int":
        return None if type(value) is int else f"expected an int, got {value!r}"
    choices = parameter.choices or ()
    if type(value) is str and value in choices:
        return None
    return f"expected one of {', '.join(map(str, choices))}, got {value!r}"
