"""Request and response models of ``POST /v1/topk`` and ``GET /v1/operators``.

Requests are strict (``extra="forbid"``, no type coercion, no NaN/Infinity): a mistake is reported,
never guessed. Cross-field rules (k ≤ n, ragged tangents, limits) live in :mod:`api.validation`
so that every error can name its exact field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from api.limits import Limits
from api.registry import IsotonicSolver, Regularization, SparseSolver, TopKOperator, TopKOutput

Operator = TopKOperator
Output = TopKOutput
Solver = SparseSolver

# Above this magnitude a number rounds to infinity in float32 (float32's largest value plus half a
# unit in the last place; the tie rounds to even, which is infinity). Every number of a request
# must stay finite in float32.
FLOAT32_OVERFLOW = 3.4028235677973366e38

Float32 = Annotated[float, Field(gt=-FLOAT32_OVERFLOW, lt=FLOAT32_OVERFLOW)]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0, lt=FLOAT32_OVERFLOW)]
Row = Annotated[list[Float32], Field(min_length=1)]
Rows = Annotated[list[Row], Field(min_length=1)]
Directions = Annotated[list[list[Float32]], Field(min_length=1)]

DERIVATIVE_FIELDS = ("tangent", "cotangent")


class TopKRequest(BaseModel):
    """Top-k of each row of ``x`` (rows may differ in length)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    x: Rows = Field(description="Scores: a list of rows; rows may have different lengths.")
    k: PositiveInt | list[PositiveInt] = Field(
        description="How many entries to keep: one int for every row, or one int per row."
    )
    operator: Operator = Field("sparse", description="sparse (p-norm), soft (SOFT OT) or hard.")
    output: Output = Field(
        "mask", description="mask (weights in [0, 1]), values (x * mask) or magnitude (by |x|)."
    )
    epsilon: PositiveFloat | list[PositiveFloat] | None = Field(
        None, description="Regularisation strength (sparse, soft): one float, or one per row."
    )
    p: float | None = Field(None, description="p of the p-norm regulariser (sparse only).")
    solver: Solver | None = Field(None, description="Solver of the sparse operator.")
    tangent: Directions | None = Field(
        None, description="Direction for a forward derivative (JVP), same shape as x."
    )
    cotangent: Directions | None = Field(
        None, description="Weights for a reverse derivative (VJP), same shape as x."
    )


class SoftSortRequest(BaseModel):
    """Soft sort (``POST /v1/sort``) or soft ranks (``POST /v1/rank``) of each row of ``x``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    x: Rows = Field(description="Values: a list of rows; rows may have different lengths.")
    epsilon: PositiveFloat | list[PositiveFloat] | None = Field(
        None, description="Regularisation strength: one float, or one per row (default: core's)."
    )
    descending: bool = Field(False, description="Sort (or rank) in descending order.")
    regularization: Regularization = Field("l2", description="Quadratic or entropic.")
    tangent: Directions | None = Field(None, description="JVP direction, shaped like x.")
    cotangent: Directions | None = Field(None, description="VJP weights, shaped like x.")


class IsotonicRequest(BaseModel):
    """Isotonic regression of each row of ``x`` (``POST /v1/isotonic``), unit weights."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    x: Rows = Field(description="Values to fit: a list of rows; rows may have different lengths.")
    increasing: bool = Field(False, description="Fit a non-decreasing (else non-increasing) row.")
    solver: IsotonicSolver = Field("pav", description="Exact PAV or approximate Dykstra.")
    tangent: Directions | None = Field(None, description="JVP direction, shaped like x.")
    cotangent: Directions | None = Field(None, description="VJP weights, shaped like x.")


DenseRequest = SoftSortRequest | IsotonicRequest


class DenseRow(BaseModel):
    """One row of a dense answer: the output, and the derivatives, one value per entry."""

    model_config = ConfigDict(extra="forbid")

    values: list[float]
    jvp: list[float] | None = None
    vjp: list[float] | None = None
    n: int


class DenseResponse(BaseModel):
    """The answer of ``POST /v1/sort``, ``/v1/rank`` and ``/v1/isotonic``."""

    model_config = ConfigDict(extra="forbid")

    operator: str
    rows: list[DenseRow]


class TopKRow(BaseModel):
    """One row of the answer in sparse form: the support and the output there.

    ``indices`` are the entries whose output is non-zero, in descending output order; ``values`` the
    output at those indices; ``jvp`` the forward derivative at those indices (if a tangent was
    sent); ``vjp`` the reverse derivative, dense, one entry per entry of the row (if a cotangent was
    sent).
    """

    model_config = ConfigDict(extra="forbid")

    indices: list[int]
    values: list[float]
    jvp: list[float] | None = None
    vjp: list[float] | None = None
    n: int
    k: int

    def dense(self) -> list[float]:
        """The full output row of length ``n`` (zeros outside the support)."""
        row = [0.0] * self.n
        for index, value in zip(self.indices, self.values, strict=True):
            row[index] = value
        return row

    def dense_jvp(self) -> list[float]:
        """The full forward derivative of length ``n`` (zeros outside the support)."""
        if self.jvp is None:
            raise ValueError("this row has no jvp: send a tangent to get one")
        row = [0.0] * self.n
        for index, value in zip(self.indices, self.jvp, strict=True):
            row[index] = value
        return row


class TopKResponse(BaseModel):
    """The answer of ``POST /v1/topk``: one :class:`TopKRow` per row of ``x``."""

    model_config = ConfigDict(extra="forbid")

    operator: Operator
    output: Output
    rows: list[TopKRow]


class ParameterInfo(BaseModel):
    """One request parameter of an operator, its default and its allowed values."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    default: bool | float | int | str | None = None
    allowed: list[bool | float | int | str] | None = None
    description: str = ""


class OperatorInfo(BaseModel):
    """One operator of ``GET /v1/operators``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    route: str = "/v1/topk"
    outputs: list[str]
    parameters: list[ParameterInfo]
    derivatives: list[str] = list(DERIVATIVE_FIELDS)
    description: str = ""
    domain: list[str] = Field(
        default_factory=list,
        description="Inputs refused with a 422 naming the field, because the operator cannot be"
        " computed exactly there in float32 (everything else is answered to a few ulps).",
    )


class OperatorsResponse(BaseModel):
    """The answer of ``GET /v1/operators``: what this server computes and how big requests may be."""

    model_config = ConfigDict(extra="forbid")

    operators: list[OperatorInfo]
    limits: Limits
