"""The operator registry: every operator the service offers, its outputs and its parameters.

One table, shared by the server and its clients. Everything else that knows about operators is
derived from it: the strict request models of :mod:`api.models` (their enums), the server's request
readers (which field a route takes, its type, default and allowed values, which operator it applies
to), ``GET /v1/operators``, the OpenAPI enums, the Open Inference Protocol model metadata and the
engine's choice of core function and compile-time arguments. ``tests/api/test_registry.py`` fails
when any of them disagrees with this table, or when a default here differs from the core's.

Operators come in two families. A ``"topk"`` operator is served by ``POST /v1/topk`` (chosen with
the ``operator`` field) and answers each row's support in sparse form; a ``"dense"`` operator has a
route of its own, ``POST /v1/<name>``, and answers one value per entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Family = Literal["topk", "dense"]
ValueType = Literal["int", "float", "bool", "choice"]

# The enums of the wire contract. api.models types its fields with these, so a value added here
# reaches the strict models, the readers and the OpenAPI document together.
TopKOperator = Literal["sparse", "soft", "hard"]
TopKOutput = Literal["mask", "values", "magnitude"]
SparseSolver = Literal["auto", "threshold", "pav", "dykstra"]
Regularization = Literal["l2", "kl"]
IsotonicSolver = Literal["pav", "dykstra"]

TOPK_ROUTE = "/v1/topk"
DEFAULT_OPERATOR: TopKOperator = "sparse"
DEFAULT_OUTPUT: TopKOutput = "mask"
DENSE_OUTPUT = "values"
MATRIX_FIELDS = ("x", "tangent", "cotangent")  # rows of numbers; tangent/cotangent shaped like x


@dataclass(frozen=True)
class Parameter:
    """One request parameter of an operator.

    ``default`` is used when the field is absent (or null, where ``nullable``); ``choices`` are its
    allowed values (None: any value of its type within range); a ``per_row`` parameter takes one
    value or a list of one per row; a ``compile_time`` parameter is a static argument of the core
    function, so each of its values is an executable of its own.
    """

    name: str
    type: ValueType
    description: str
    default: float | int | str | bool | None = None
    choices: tuple[float | int | str, ...] | None = None
    per_row: bool = False
    compile_time: bool = False
    nullable: bool = False
    required: bool = False

    @property
    def type_name(self) -> str:
        """The JSON type as ``GET /v1/operators`` writes it (e.g. ``float | list[float]``)."""
        single = "str" if self.type == "choice" else self.type
        return f"{single} | list[{single}]" if self.per_row else single


@dataclass(frozen=True)
class Operator:
    """One operator: its family, its core function per output, and its parameters."""

    name: str
    family: Family
    outputs: Mapping[str, str]  # output name -> name of the function in ``core``
    parameters: tuple[Parameter, ...]
    description: str

    @property
    def route(self) -> str:
        return TOPK_ROUTE if self.family == "topk" else f"/v1/{self.name}"

    @property
    def default_output(self) -> str:
        return DEFAULT_OUTPUT if self.family == "topk" else DENSE_OUTPUT

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    @property
    def takes_k(self) -> bool:
        return self.parameter("k") is not None

    @property
    def takes_epsilon(self) -> bool:
        return self.parameter("epsilon") is not None

    @property
    def compile_time(self) -> tuple[str, ...]:
        """Names of the compile-time parameters, sorted (the order of a kernel's static key)."""
        return tuple(sorted(p.name for p in self.parameters if p.compile_time))

    def configured(self, **choices: Sequence[float | int | str]) -> Operator:
        """This operator with server-configured choices for some parameters (the first is the
        default), e.g. ``configured(p=(4/3, 2.0))`` for a server's ``TOPK_P_VALUES``."""
        parameters = tuple(
            dataclasses.replace(p, choices=tuple(choices[p.name]), default=choices[p.name][0])
            if p.name in choices
            else p
            for p in self.parameters
        )
        return dataclasses.replace(self, parameters=parameters)


K = Parameter(
    "k",
    "int",
    "How many entries to keep: 1 <= k <= the row's length; one k, or one per row.",
    per_row=True,
    required=True,
)


def _epsilon(default: float) -> Parameter:
    return Parameter(
        "epsilon",
        "float",
        "Regularisation strength, > 0 and finite in float32; one, or one per row.",
        default=default,
        per_row=True,
        nullable=True,
    )


P = Parameter(
    "p",
    "float",
    "p of the p-norm regulariser; one of the server's TOPK_P_VALUES (4/3: smooth, 2: piecewise "
    "linear).",
    default=4 / 3,
    compile_time=True,
    nullable=True,
)
SPARSE_SOLVER = Parameter(
    "solver",
    "choice",
    "auto and threshold: sort-free exact threshold; pav: exact pool-adjacent-violators; dykstra: "
    "alternating projections (approximate).",
    default="auto",
    choices=get_args(SparseSolver),
    compile_time=True,
    nullable=True,
)
DESCENDING = Parameter(
    "descending", "bool", "Sort (or rank) in descending order.", default=False, compile_time=True
)
REGULARIZATION = Parameter(
    "regularization",
    "choice",
    "Quadratic (l2) or entropic (kl) regularisation.",
    default="l2",
    choices=get_args(Regularization),
    compile_time=True,
)
INCREASING = Parameter(
    "increasing",
    "bool",
    "Fit a non-decreasing row (else non-increasing).",
    default=False,
    compile_time=True,
)
ISOTONIC_SOLVER = Parameter(
    "solver",
    "choice",
    "Exact pool-adjacent-violators (pav) or approximate Dykstra.",
    default="pav",
    choices=get_args(IsotonicSolver),
    compile_time=True,
)

OPERATORS: tuple[Operator, ...] = (
    Operator(
        "sparse",
        "topk",
        {
            "mask": "sparse_topk_mask",
            "values": "sparse_topk_values",
            "magnitude": "sparse_topk_magnitude",
        },
        (K, _epsilon(0.1), P, SPARSE_SOLVER),
        "Sparse soft top-k with p-norm regularisation (Sander et al., ICML 2023).",
    ),
    Operator(
        "soft",
        "topk",
        {"mask": "soft_topk_mask"},
        (K, _epsilon(0.1)),
        "SOFT top-k by entropic optimal transport (Xie et al., NeurIPS 2020).",
    ),
    Operator(
        "hard",
        "topk",
        {
            "mask": "hard_topk_mask",
            "values": "hard_topk_values",
            "magnitude": "hard_topk_magnitude",
        },
        (K,),
        "Exact top-k (ties to the lower index); its derivative is zero.",
    ),
    Operator(
        "sort",
        "dense",
        {DENSE_OUTPUT: "soft_sort"},
        (_epsilon(1.0), DESCENDING, REGULARIZATION),
        "Soft sort by projection onto the permutahedron (Blondel et al., ICML 2020).",
    ),
    Operator(
        "rank",
        "dense",
        {DENSE_OUTPUT: "soft_rank"},
        (_epsilon(1.0), DESCENDING, REGULARIZATION),
        "Soft ranks by projection onto the permutahedron (Blondel et al., ICML 2020).",
    ),
    Operator(
        "isotonic",
        "dense",
        {DENSE_OUTPUT: "isotonic_regression"},
        (INCREASING, ISOTONIC_SOLVER),
        "Isotonic regression (non-increasing unless increasing=true), unit weights.",
    ),
)

BY_NAME: dict[str, Operator] = {operator.name: operator for operator in OPERATORS}
TOPK_OPERATORS: tuple[str, ...] = tuple(o.name for o in OPERATORS if o.family == "topk")
DENSE_OPERATORS: tuple[str, ...] = tuple(o.name for o in OPERATORS if o.family == "dense")


def route_fields(operators: Sequence[Operator]) -> tuple[str, ...]:
    """The fields of the JSON body of the route that serves ``operators`` (all of one route)."""
    fields = ["x"]
    if operators[0].family == "topk":
        fields += ["operator", "output"]
    for operator in operators:
        fields += [p.name for p in operator.parameters if p.name not in fields]
    return (*fields, "tangent", "cotangent")
