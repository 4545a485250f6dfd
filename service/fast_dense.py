"""Reading a plainly valid ``POST /v1/sort``, ``/v1/rank`` or ``/v1/isotonic`` body without pydantic.

The dense twin of :class:`~service.fast_request.PlainTopKReader`, under the same rule: accept a
body only when exact type and range tests prove that the strict path would accept it, and lay it
out with the same :func:`~service.prepared.layout`; at the least doubt return ``None`` and let the
strict path answer (tests check both paths on many bodies). These bodies may hold JSON booleans
(``descending``, ``increasing``), so instead of refusing every ``true``/``false`` the reader
checks that each one in the body is one of those top-level flags, never a number inside ``x``.
"""

from __future__ import annotations

from typing import Any

import orjson

from api.models import IsotonicRequest, SoftSortRequest
from service.engine import Engine
from service.errors import ApiError
from service.fast_request import _epsilon_of, plain_matrices
from service.prepared import PreparedRequest, layout

# Per route: its fields, and the allowed values of its flags and choices (listed, not read from
# the models: a field added to a model later must take the strict path until this reader learns it).
SORT_FIELDS = frozenset({"x", "epsilon", "descending", "regularization", "tangent", "cotangent"})
ISOTONIC_FIELDS = frozenset({"x", "increasing", "solver", "tangent", "cotangent"})
CHOICES: dict[str, frozenset[str]] = {
    "regularization": frozenset({"l2", "kl"}),
    "solver": frozenset({"pav", "dykstra"}),
}
FLAGS = frozenset({"descending", "increasing"})


class PlainDenseReader:
    """Reads plainly valid bodies of one dense operator (``sort``, ``rank`` or ``isotonic``)."""

    def __init__(self, engine: Engine, operator: str) -> None:
        self.engine = engine
        self.operator = operator
        self.fields = ISOTONIC_FIELDS if operator == "isotonic" else SORT_FIELDS
        model = IsotonicRequest if operator == "isotonic" else SoftSortRequest
        # The models' defaults, as the strict path passes them (the core's may differ).
        self.defaults = {
            name: model.model_fields[name].default
            for name in self.fields - {"x", "epsilon", "tangent", "cotangent"}
        }

    def read(self, body: bytes) -> PreparedRequest | None:
        """The prepared request of a plainly valid body, or ``None`` to take the strict path."""
        if self.operator not in self.engine.operators:
            return None  # the strict path answers 404
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(request) is not dict or not request.keys() <= self.fields:
            return None
        given: dict[str, Any] = {}
        flags = 0
        for name in self.fields - {"x", "epsilon", "tangent", "cotangent"}:
            value = request.get(name)
            if value is None:
                if name in request:
                    return None  # null is not a value of these fields
                continue
            if name in FLAGS:
                if type(value) is not bool:
                    return None
                flags += 1
            elif type(value) is not str or value not in CHOICES[name]:
                return None
            given[name] = value
        if body.count(b"true") + body.count(b"false") != flags:
            return None  # a boolean somewhere else, e.g. inside x
        limits = self.engine.limits
        matrices = plain_matrices(request, body, limits.max_rows, limits.max_n)
        if matrices is None:
            return None
        x, lengths, tangent, cotangent = matrices
        epsilon_ok, epsilon = _epsilon_of(request.get("epsilon"), len(lengths))
        if not epsilon_ok or (epsilon is not None and self.operator == "isotonic"):
            return None
        static = self.engine.static_for(self.operator, **{**self.defaults, **given})
        ones = [1] * len(lengths)
        try:
            return layout(
                self.engine, self.operator, "values", static, x, ones, epsilon, tangent,
                cotangent, lengths,
            )  # fmt: skip
        except ApiError:  # an epsilon beyond float32: the strict path says so
            return None
