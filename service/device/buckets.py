"""Shape buckets: every device call is padded up to a (rows, n) pair from two fixed ladders.

XLA compiles one executable per exact shape, so raw request shapes would compile without end.
Padding rows and row lengths up to the next rung keeps the number of executables small and known.
A bucket holds at most ``max_entries`` entries: more rows than that go through in several calls
(rows are independent), so a bucket never needs more memory than the largest request.
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

    @classmethod
    def parse(cls, text: str) -> ShapeBucket:
        """``"16x1024"`` → ``ShapeBucket(16, 1024)``."""
        rows, _, n = text.strip().lower().partition("x")
        bucket = cls(int(rows), int(n))
        if bucket.rows < 1 or bucket.n < 1:
            raise ValueError(f"a bucket is ROWSxN with both >= 1, got {text!r}")
        return bucket

    @property
    def entries(self) -> int:
        return self.rows * self.n


@dataclass(frozen=True)
class BucketLadder:
    """The rungs of both axes; :meth:`bucket_for` picks the smallest bucket that fits."""

    row_rungs: tuple[int, ...]
    n_rungs: tuple[int, ...]
    max_entries: int | None = None

    def bucket_for(self, rows: int, n: int) -> ShapeBucket:
        """The bucket of a call of ``rows`` rows of at most ``n`` entries: the smallest that holds
        them, or, past ``max_entries``, the largest of that row length (the rest goes in more
        calls)."""
        n_rung = self.n_rung(n)
        return ShapeBucket(self.row_rung(min(rows, self.most_rows(n_rung))), n_rung)

    def most_rows(self, n_rung: int) -> int:
        """The largest row rung whose bucket of length ``n_rung`` holds at most ``max_entries``
        (the first rung if none does)."""
        rungs = self.row_rungs
        if self.max_entries is None:
            return rungs[-1]
        position = bisect.bisect_right(rungs, self.max_entries // n_rung)
        return rungs[max(position - 1, 0)]

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
