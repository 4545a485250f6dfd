"""Reading a plainly valid ``POST /v1/topk`` body without pydantic.

Nearly every request a sidecar sends is valid and simple, and for a 1×64 request pydantic's strict
parse plus our cross-field checks cost more than the device. :meth:`PlainTopKReader.read` reads the
body with orjson and accepts it only when a handful of exact type and range tests prove it valid;
at the least doubt (a wrong type, an unknown field, a ``tangent`` or ``cotangent`` not shaped like
``x``, a value out of range, a float32 overflow) it returns ``None`` and the request takes the strict path, which writes the 4xx body.
So this reader never accepts what the strict path refuses, and both lay an accepted request out
with the same :func:`~service.prepared.layout` (tests check both on many bodies).
"""

from __future__ import annotations

import math
from typing import Any, get_args

import numpy as np
import orjson

from api.models import Solver
from api.validation import OPERATOR_PARAMETERS
from service.engine import Engine
from service.errors import ApiError
from service.kernels import Static
from service.prepared import FLOAT32_OVERFLOW, PreparedRequest, fits_float32, layout, snap_p

# Listed, not read from the model: a field added to TopKRequest later must take the strict path
# until this reader learns it.
NUMPY_BODY_BYTES = 64 * 1024  # above this, x is checked and laid out by NumPy in one go
PLAIN_FIELDS = frozenset(
    {"x", "k", "operator", "output", "epsilon", "p", "solver", "tangent", "cotangent"}
)
SOLVERS = frozenset(get_args(Solver))
NUMBER_TYPES = frozenset({float, int})  # by exact type: bool, a subclass of int, is refused


def _is_number(value: Any) -> bool:
    return type(value) in NUMBER_TYPES and math.isfinite(value)


def _is_positive_number(value: Any) -> bool:
    return _is_number(value) and value > 0


def _rows_of(x: Any, max_rows: int, max_n: int) -> list[int] | None:
    """The row lengths of ``x`` if it is 1..max_rows rows of 1..max_n numbers, else None.

    The body holds no JSON ``true`` or ``false`` (checked by the caller) and orjson yields only
    finite floats and ints for numbers, so any entry that is not a number (a string, null, a list,
    an object) makes ``min``, ``max`` or their comparison with a float raise ``TypeError``.
    """
    if type(x) is not list or not 0 < len(x) <= max_rows:
        return None
    lengths = []
    try:
        for row in x:
            if type(row) is not list or not 0 < len(row) <= max_n or not fits_float32(row):
                return None
            lengths.append(len(row))
    except TypeError:
        return None
    return lengths


def _matrix_of(x: Any, max_rows: int, max_n: int) -> tuple[np.ndarray, list[int]] | None:
    """``x`` as a zero-padded float32 matrix and its row lengths, or None; for big bodies, where
    NumPy's conversion costs a third of ``min``/``max`` over every row. The caller has made sure
    no JSON string or boolean is inside ``x`` (NumPy would convert ``"1.5"`` and ``true``)."""
    if type(x) is not list or not 0 < len(x) <= max_rows:
        return None
    lengths = []
    for row in x:
        if type(row) is not list or not 0 < len(row) <= max_n:
            return None
        lengths.append(len(row))
    width = max(lengths)
    try:  # a nested list or an object raises here; null becomes NaN, refused below
        if min(lengths) == width:
            matrix = np.array(x, dtype=np.float64)
        else:
            matrix = np.zeros((len(x), width))
            for i, row in enumerate(x):
                matrix[i, : len(row)] = row
    except (TypeError, ValueError):
        return None
    if matrix.ndim != 2 or not (np.abs(matrix) < FLOAT32_OVERFLOW).all():
        return None
    with np.errstate(over="ignore"):  # |v| just above float32's largest rounds down to it
        return matrix.astype(np.float32), lengths


def _numbers_of(value: Any, small: bool, max_rows: int, max_n: int) -> tuple[Any, list[int] | None]:
    """(rows, lengths) of a plainly valid matrix field, else (value, None): the lists themselves
    for a small body, a zero-padded float32 matrix for a big one."""
    if small:
        return value, _rows_of(value, max_rows, max_n)
    laid_out = _matrix_of(value, max_rows, max_n)
    return laid_out if laid_out is not None else (value, None)


Matrix = list[list[float]] | np.ndarray


def plain_matrices(
    request: dict[str, Any], body: bytes, max_rows: int, max_n: int
) -> tuple[Matrix, list[int], Matrix | None, Matrix | None] | None:
    """``x``, its row lengths, and ``tangent`` and ``cotangent`` (None if not given) of a parsed
    body when all three are plainly valid and shaped alike, else None. A big body's matrices come
    zero-padded in float32; the caller has refused JSON booleans inside them."""
    small = len(body) <= NUMPY_BODY_BYTES
    if not small:
        strings = sum(type(value) is str for value in request.values())
        if body.count(b'"') != 2 * (len(request) + strings):
            return None  # a string somewhere inside x, tangent, cotangent or another number
    x, lengths = _numbers_of(request.get("x"), small, max_rows, max_n)
    if lengths is None:
        return None
    derivatives: list[Matrix | None] = []
    for name in ("tangent", "cotangent"):  # shaped like x, row for row
        given = request.get(name)
        if given is not None:
            given, shape = _numbers_of(given, small, max_rows, max_n)
            if shape != lengths:
                return None
        derivatives.append(given)
    return x, lengths, derivatives[0], derivatives[1]


def _ks_of(k: Any, lengths: list[int], max_k: int) -> list[int] | None:
    """One k per row if every k is an int in 1..min(max_k, row length), else None."""
    ks = [k] * len(lengths) if type(k) is int else k
    if type(ks) is not list or len(ks) != len(lengths):
        return None
    for value, n in zip(ks, lengths, strict=True):
        if type(value) is not int or not 1 <= value <= min(max_k, n):
            return None
    return ks


def _epsilon_of(epsilon: Any, rows: int) -> tuple[bool, float | list[float] | None]:
    """(ok, epsilon): one positive number, one per row, or None."""
    if epsilon is None or _is_positive_number(epsilon):
        return True, epsilon
    if type(epsilon) is list and len(epsilon) == rows and all(map(_is_positive_number, epsilon)):
        return True, epsilon
    return False, None


class PlainTopKReader:
    """Reads plainly valid bodies for one engine (and remembers each operator's compile knobs)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._statics: dict[tuple[str, Any, Any], Static] = {}

    def _static(self, operator: str, p: Any, solver: Any) -> Static:
        key = (operator, p, solver)
        static = self._statics.get(key)
        if static is None:  # ApiError for a p that is not offered: the strict path says so
            static = snap_p(self.engine.static_for(operator, p=p, solver=solver), self.engine)
            if len(self._statics) < 64:  # clients choose p: bound what they can make us keep
                self._statics[key] = static
        return static

    def read(self, body: bytes) -> PreparedRequest | None:
        """The prepared request of a plainly valid body, or ``None`` to take the strict path."""
        if b"true" in body or b"false" in body:  # no field takes a boolean: let pydantic say so
            return None
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(request) is not dict or not request.keys() <= PLAIN_FIELDS:
            return None
        engine = self.engine
        limits = engine.limits
        matrices = plain_matrices(request, body, limits.max_rows, limits.max_n)
        if matrices is None:
            return None
        x, lengths, tangent, cotangent = matrices
        ks = _ks_of(request.get("k"), lengths, limits.max_k)
        operator = request.get("operator", "sparse")
        output = request.get("output", "mask")
        available = engine.operators.get(operator) if type(operator) is str else None
        if (
            ks is None
            or available is None
            or available.spec.kind != "topk"
            or type(output) is not str
            or output not in available.functions
        ):
            return None
        applicable = OPERATOR_PARAMETERS.get(operator, frozenset())
        p, solver = request.get("p"), request.get("solver")
        epsilon_ok, epsilon = _epsilon_of(request.get("epsilon"), len(lengths))
        if (
            not epsilon_ok
            or (epsilon is not None and "epsilon" not in applicable)
            or (p is not None and ("p" not in applicable or not _is_number(p)))
            or (
                solver is not None
                and ("solver" not in applicable or type(solver) is not str or solver not in SOLVERS)
            )
        ):
            return None
        try:
            static = self._static(operator, p, solver)
            return layout(
                engine, operator, output, static, x, ks, epsilon, tangent, cotangent, lengths
            )
        except ApiError:  # a p not offered: the strict path says so
            return None
