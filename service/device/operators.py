"""The operators of :mod:`api.registry` bound to the core functions that compute them.

An operator whose core functions are missing from ``core.__all__`` is simply not offered (``GET
/v1/operators`` does not list it, and a request for it is refused naming ``operator``, or 404 on
its own route). The sparse operator's ``p`` takes the server's configured values
(``TOPK_P_VALUES``); every other default comes from the registry, which a test holds equal to the
core's signatures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import core
from api.registry import OPERATORS, Operator, Parameter
from service.device.work import Static

CoreFunction = Callable[..., Any]


@dataclass(frozen=True)
class BoundOperator:
    """An operator of the registry (with this server's choices) and the core functions it has."""

    spec: Operator
    functions: Mapping[str, CoreFunction]  # output name -> core function

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        return self.spec.family

    def static(self, given: Mapping[str, Any]) -> Static:
        """The compile-time keywords of a kernel: the ``given`` values (None: not given), else the
        defaults, sorted by name."""
        return tuple(
            (p.name, default if (value := given.get(p.name)) is None else value)
            for p, default in self._compile_time
        )

    @functools.cached_property
    def _compile_time(self) -> tuple[tuple[Parameter, Any], ...]:
        return tuple(
            (p, p.default) for p in sorted(self.spec.parameters, key=lambda p: p.name)
            if p.compile_time
        )  # fmt: skip


def bind_operators(p_values: Sequence[float]) -> dict[str, BoundOperator]:
    """The registry's operators that ``core`` exports, with the outputs it has for them."""
    exported = set(getattr(core, "__all__", ()))
    bound: dict[str, BoundOperator] = {}
    for operator in OPERATORS:
        functions = {
            output: getattr(core, name)
            for output, name in operator.outputs.items()
            if name in exported
        }
        if not functions:
            continue
        spec = operator.configured(p=p_values) if operator.parameter("p") else operator
        bound[operator.name] = BoundOperator(spec, functions)
    return bound
