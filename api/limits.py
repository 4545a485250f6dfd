"""Size limits a server announces in ``GET /v1/operators`` and enforces on every request."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """Semantic caps of one server. Requests beyond them get 413 (size) or 422 (value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rows: int = Field(ge=1, description="Most rows in one request.")
    max_n: int = Field(ge=1, description="Most entries in one row.")
    max_k: int = Field(ge=1, description="Largest k (it must also be at most the row's length).")
    max_entries: int = Field(ge=1, description="Most entries in one request: rows x longest row.")
    max_body_bytes: int = Field(ge=1, description="Largest request body, in bytes.")
    max_batch_rows: int = Field(ge=1, description="Row budget of one device call (batching).")
    # Announced by servers since the connection guard (defaults: an older server's values).
    max_header_bytes: int = Field(
        32 * 1024, ge=1, description="Largest request line plus headers, in bytes (431 beyond)."
    )
    body_idle_timeout_s: float = Field(
        10.0, gt=0, description="Longest pause while sending a body (408 and closed beyond)."
    )
    keep_alive_s: float = Field(
        75.0, gt=0, description="Idle time after which the server closes a kept-alive connection."
    )
    authenticated: bool = Field(
        False, description="Whether /v1 and /v2 routes need 'Authorization: Bearer <key>'."
    )
