"""The one error body every 4xx/5xx answer uses: a summary plus the offending fields and why."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict


class FieldError(BaseModel):
    """One reason a request was refused. ``field`` is a path such as ``x[2][5]``, ``k[1]`` or ``body``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    reason: str


class ErrorBody(BaseModel):
    """``{"error": summary, "errors": [{"field": ..., "reason": ...}, ...]}`` (OIP-compatible ``error``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: str
    errors: list[FieldError] = []


def field_path(location: Sequence[int | str]) -> str:
    """``("x", 2, 5)`` → ``"x[2][5]"``; an empty location is the whole ``body``."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "body"
