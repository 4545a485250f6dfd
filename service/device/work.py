"""The unit of work the device side takes: one checked request, and the key of its batch.

A :class:`WorkUnit` is a request every check has passed already (each number is finite in
float32, each k fits its row, the kernel exists for it), so that a batch only ever holds requests
that can be computed: one bad request never fails its batch-mates. It carries its rows as they came
in (lists for a small body, a zero-padded float32 matrix for a big one or a binary tensor): NumPy
lays out a whole batch at once (:func:`~service.device.assembly.pad_batch`), which for small
requests costs far less than one set of arrays per request.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np

Derivative = Literal["none", "jvp", "vjp", "both"]
DERIVATIVES: tuple[Derivative, ...] = ("none", "jvp", "vjp", "both")
Static = tuple[tuple[str, Any], ...]  # compile-time keyword arguments, sorted by name
Matrix = list[list[float]] | np.ndarray


def derivative_of(has_tangent: bool, has_cotangent: bool) -> Derivative:
    if has_tangent and has_cotangent:
        return "both"
    if has_tangent:
        return "jvp"
    return "vjp" if has_cotangent else "none"


class BatchKey(NamedTuple):
    """Requests with equal keys can share a device call: same kernel, same padded row length.

    A named tuple, not a dataclass: it is hashed several times per request, and a tuple hashes
    in C."""

    operator: str
    output: str
    derivative: Derivative
    static: Static
    n: int


class WorkUnit(NamedTuple):
    """One checked request, with its batch key and its per-row data."""

    key: BatchKey
    x: Matrix
    k: list[int]  # one per row (1 for the operators that take no k)
    epsilon: float | list[float]  # one for every row, or one per row
    lengths: list[int]
    tangent: Matrix | None  # shaped like x, and laid out like it
    cotangent: Matrix | None

    @property
    def rows(self) -> int:
        return len(self.lengths)
