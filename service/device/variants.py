"""What one kernel computes, as data: the variants of the operators and how each output is read.

A *variant* is one distinct computation of the core: a core function with its compile-time
keywords (``p``, ``solver``, ``descending``...). Every choice that costs nothing to carry is data
instead of a variant of its own, because each variant costs about a second of XLA compilation per
shape bucket (bench/RESULTS.md, "Start-up"):

- outputs that the core defines from another one (``sparse_topk_values = x * sparse_topk_mask``,
  ``hard_topk_magnitude = x * hard_topk_mask(|x|)``, see their docstrings) are one variant read
  through a :class:`Form` (take ``|x|`` first, multiply by ``x`` after);
- a compile-time choice the core defines as another choice on ``-x`` (``soft_sort`` ascending is
  ``-soft_sort(-x)`` descending, ``soft_rank`` ascending is ``soft_rank(-x)`` descending,
  ``isotonic_regression`` increasing is ``-isotonic_regression(-y)`` decreasing: see their
  docstrings) is the other choice read with negations (:data:`MIRRORED`); negation is exact, so the
  answers are the core's own to the bit (a test holds them to it, subnormals and ties included);
- the solver ``auto`` is the core's ``threshold`` (the registry says so, and a test holds the core
  to it), so it is not compiled twice;
- derivatives are not variants at all: a kernel computes the JVP and VJP lanes or it does not.

Combinations the core refuses (``solver="dykstra"`` with ``p != 2``) are no variant; the request
checks refuse them with 422 through :func:`refusal`, and a test holds that rule to the core's.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from api.registry import Parameter
from core import SOLVER_P, solver_supports_p
from service.device.operators import BoundOperator
from service.device.work import Static

# Solver values that name the same computation of the core as another value.
SOLVER_ALIASES: dict[str, str] = {"auto": "threshold"}

# Outputs the core defines from another output of the same operator: function -> (the function it
# is computed from, take |x| first, multiply by x after).
DERIVED: dict[str, tuple[str, bool, bool]] = {
    "sparse_topk_values": ("sparse_topk_mask", False, True),
    "hard_topk_values": ("hard_topk_mask", False, True),
    "hard_topk_magnitude": ("hard_topk_mask", True, True),
}


# Compile-time choices the core defines as another choice on -x: function -> (knob, the value read
# through the other one, that other value, negate the output too). Each saves a variant per cover
# (~1 CPU-s of XLA compile and ~0.25 s of tracing each, bench/RESULTS.md "cover compile cost").
MIRRORED: dict[str, tuple[str, bool, bool, bool]] = {
    "soft_sort": ("descending", False, True, True),
    "soft_rank": ("descending", False, True, False),
    "isotonic_regression": ("increasing", True, False, True),
}


@dataclass(frozen=True, order=True)
class Variant:
    """One computation: a core function and its compile-time keywords, sorted by name."""

    function: str
    static: Static

    def __str__(self) -> str:
        knobs = ",".join(f"{name}={value}" for name, value in self.static)
        return f"{self.function}({knobs})"


@dataclass(frozen=True)
class Form:
    """How an output is read from a variant:
    ``out = (x if times_x else 1) * (-1 if negated else 1) * f(a)``, with ``a = |x|`` if
    ``of_magnitude``, ``-x`` if ``of_negation``, else ``x``."""

    variant: Variant
    of_magnitude: bool
    times_x: bool
    of_negation: bool = False
    negated: bool = False


def refusal(operator: str, static: Static) -> tuple[str, str] | None:
    """``(field, reason)`` when the core does not compute ``operator`` with these knobs
    (``core.SOLVER_P``: the ``p`` each sparse solver supports)."""
    knobs = dict(static)
    if operator == "sparse" and "solver" in knobs:
        solver, p = str(knobs["solver"]), float(knobs.get("p", 2.0))
        if not solver_supports_p(solver, p):
            supported = ", ".join(f"{v:g}" for v in SOLVER_P[solver] or ())
            return "solver", f"solver={solver!r} supports p = {supported} only, got p={p!r}"
    return None


def form_of(operator: BoundOperator, output: str, static: Static) -> Form:
    """The variant and reading of ``operator``'s ``output`` with the compile-time ``static``."""
    function = operator.spec.outputs[output]
    of_magnitude = times_x = False
    if function in DERIVED:
        function, of_magnitude, times_x = DERIVED[function]
    knobs = tuple(
        (name, SOLVER_ALIASES.get(value, value) if name == "solver" else value)
        for name, value in static
    )
    of_negation = negated = False
    if function in MIRRORED:
        knob, mirrored, other, negate_output = MIRRORED[function]
        if (knob, mirrored) in knobs:
            knobs = tuple((name, other if name == knob else value) for name, value in knobs)
            of_negation, negated = True, negate_output
    return Form(Variant(function, knobs), of_magnitude, times_x, of_negation, negated)


def _choices(parameter: Parameter) -> Sequence[Any]:
    if parameter.type == "bool":
        return (False, True)
    assert parameter.choices is not None, f"compile-time {parameter.name} needs its choices"
    return parameter.choices


def variant_table(operators: Mapping[str, BoundOperator]) -> tuple[Variant, ...]:
    """Every variant a request to these operators can need, once each, in a stable order."""
    variants: set[Variant] = set()
    for operator in operators.values():
        compile_time = sorted(
            (p for p in operator.spec.parameters if p.compile_time), key=lambda p: p.name
        )
        names = [p.name for p in compile_time]
        for values in itertools.product(*(_choices(p) for p in compile_time)):
            static = tuple(zip(names, values, strict=True))
            if refusal(operator.name, static) is not None:
                continue
            for output in operator.functions:
                variants.add(form_of(operator, output, static).variant)
    return tuple(sorted(variants, key=str))
