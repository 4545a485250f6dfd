"""Shape buckets: every device call is padded up to a (rows, n) pair from two fixed ladders.

XLA compiles one executable per exact shape, so raw request shapes would compile without end.
Padding rows and row lengths up to the next rung keeps the number of executables small and known.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ShapeBucket:
    """The padded shape ``(rows, n)`` of one device call."""

    rows: int
    n: int

    def __str__(self) -> str:
        return f"{self.rows}x{self.n}"


@dataclass(frozen=True)
class BucketLadder:
    """The rungs of both axes; :meth:`bucket_for` picks the smallest bucket that fits."""

    row_rungs: tuple[int, ...]
    n_rungs: tuple[int, ...]

    def bucket_for(self, rows: int, n: int) -> ShapeBucket:
        """The smallest bucket holding ``rows`` rows of at most ``n`` entries."""
        return ShapeBucket(_rung(self.row_rungs, rows, "rows"), _rung(self.n_rungs, n, "n"))

    def n_rung(self, n: int) -> int:
        """The padded length of a row of ``n`` entries."""
        return _rung(self.n_rungs, n, "n")

    def row_rung(self, rows: int) -> int:
        """The padded row count of a batch of ``rows`` rows."""
        return _rung(self.row_rungs, rows, "rows")


def _rung(rungs: tuple[int, ...], size: int, axis: str) -> int:
    position = bisect.bisect_left(rungs, size)
    if position == len(rungs):
        raise ValueError(f"{axis}={size} exceeds the largest bucket {rungs[-1]}")
    return rungs[position]
