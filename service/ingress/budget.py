"""The memory budget of request bodies: bytes of big bodies being read, queued or answered.

A body is held from its headers to its answer (its bytes, then the work unit and answer made from
them). Only bodies above 64 KiB (:data:`~service.ingress.gate.INLINE_BYTES`) count: smaller ones
are at most one per connection and the connection cap bounds them, and counting them would let big
bodies crowd small requests out. A body whose ``Content-Length`` would take the total past the
budget is refused (503) from its headers, before a byte of it is read; a chunked body is counted
as it arrives. One body is always let through when nothing is held, so the largest body the
limits allow is never refused for being alone. Measured before: four concurrent 50 MB bodies cost
~1 GB of RSS and stalled every other client for ~3 s.
"""

from __future__ import annotations


class BodyBudget:
    """``held`` bytes against ``limit``; :meth:`reserve` hands out what is released later."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    def reserve(self, size: int) -> Reservation:
        """Hold ``size`` bytes (the caller checked :meth:`fits`)."""
        self.held += size
        return Reservation(self, size)


class Reservation:
    """Bytes held for one body; :meth:`grow` as a chunked body arrives, :meth:`release` once."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self.budget = budget
        self.size = size

    def grow(self, size: int) -> bool:
        """Hold ``size`` bytes in all (False, and nothing more held, if they do not fit)."""
        more = size - self.size
        if more <= 0:
            return True
        budget = self.budget
        if budget.held > self.size and budget.held + more > budget.limit:
            return False
        budget.held += more
        self.size = size
        return True

    def release(self) -> None:
        self.budget.held -= self.size
        self.size = 0
