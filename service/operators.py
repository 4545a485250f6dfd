"""The operator table: which core function computes which (operator, output) pair.

Adding an operator is one :class:`OperatorSpec` entry. An entry whose core functions are missing
from ``core.__all__`` is simply not offered (``GET /v1/operators`` does not list it, and a request
for it answers 422 naming ``operator``). Defaults are read from the core signatures, so the
service and the library cannot disagree about them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import core

CoreFunction = Callable[..., Any]
Kind = Literal["topk", "dense"]


@dataclass(frozen=True)
class OperatorSpec:
    """One operator family: its core function per output and the parameters it takes.

    ``kind`` says how answers are shaped: ``"topk"`` rows are sparse (support and values, served
    by ``POST /v1/topk``), ``"dense"`` rows have one value per entry (``POST /v1/<name>``).
    ``static`` names the keyword arguments that are compile-time constants of the core function.
    """

    name: str
    functions: Mapping[str, str]  # output name -> core function name
    kind: Kind
    takes_k: bool
    takes_epsilon: bool
    static: tuple[str, ...]
    description: str


OPERATOR_TABLE: tuple[OperatorSpec, ...] = (
    OperatorSpec(
        "sparse",
        {
            "mask": "sparse_topk_mask",
            "values": "sparse_topk_values",
            "magnitude": "sparse_topk_magnitude",
        },
        kind="topk",
        takes_k=True,
        takes_epsilon=True,
        static=("p", "solver"),
        description="Sparse soft top-k with p-norm regularisation (Sander et al., ICML 2023).",
    ),
    OperatorSpec(
        "soft",
        {
            "mask": "soft_topk_mask",
            "values": "soft_topk_values",
            "magnitude": "soft_topk_magnitude",
        },
        kind="topk",
        takes_k=True,
        takes_epsilon=True,
        static=(),
        description="SOFT top-k by entropic optimal transport (Xie et al., NeurIPS 2020).",
    ),
    OperatorSpec(
        "hard",
        {
            "mask": "hard_topk_mask",
            "values": "hard_topk_values",
            "magnitude": "hard_topk_magnitude",
        },
        kind="topk",
        takes_k=True,
        takes_epsilon=False,
        static=(),
        description="Exact top-k (ties to the lower index); its derivative is zero.",
    ),
    OperatorSpec(
        "sort",
        {"values": "soft_sort"},
        kind="dense",
        takes_k=False,
        takes_epsilon=True,
        static=("descending", "regularization"),
        description="Soft sort by projection onto the permutahedron (Blondel et al., ICML 2020).",
    ),
    OperatorSpec(
        "rank",
        {"values": "soft_rank"},
        kind="dense",
        takes_k=False,
        takes_epsilon=True,
        static=("descending", "regularization"),
        description="Soft ranks by projection onto the permutahedron (Blondel et al., ICML 2020).",
    ),
    OperatorSpec(
        "isotonic",
        {"values": "isotonic_regression"},
        kind="dense",
        takes_k=False,
        takes_epsilon=False,
        static=("increasing", "solver"),
        description="Isotonic regression (decreasing unless increasing=true), unit weights.",
    ),
)


@dataclass(frozen=True)
class AvailableOperator:
    """An operator of the table with the core functions this build actually has."""

    spec: OperatorSpec
    functions: Mapping[str, CoreFunction]
    defaults: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name


def _keyword_defaults(function: CoreFunction) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def available_operators() -> dict[str, AvailableOperator]:
    """The operators of :data:`OPERATOR_TABLE` that ``core`` exports, with their outputs."""
    exported = set(getattr(core, "__all__", ()))
    available: dict[str, AvailableOperator] = {}
    for spec in OPERATOR_TABLE:
        functions = {
            output: getattr(core, name)
            for output, name in spec.functions.items()
            if name in exported
        }
        if functions:
            first = next(iter(functions.values()))
            available[spec.name] = AvailableOperator(spec, functions, _keyword_defaults(first))
    return available
