"""Count XLA backend compilations through JAX's monitoring events."""

from __future__ import annotations

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_count = 0


def _listener(event: str, duration: float, **_: object) -> None:
    global _count
    if event == _COMPILE_EVENT:
        _count += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


def compilations() -> int:
    """Backend compilations (or persistent-cache loads) so far in this process."""
    return _count
