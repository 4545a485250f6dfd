"""All configuration of the service in one object, read from ``TOPK_*`` environment variables.

Every field ``name`` is set by ``TOPK_<NAME>`` (e.g. ``TOPK_MAX_QUEUE_DELAY_MS=2``); lists are comma
separated (``TOPK_N_BUCKETS=64,256,1024``). The object is validated once, at start-up, so that a
bad configuration fails fast instead of at the first request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.limits import Limits

ENV_PREFIX = "TOPK_"
Derivative = Literal["none", "jvp", "vjp", "both"]


def _powers_of_two(low: int, high: int) -> tuple[int, ...]:
    return tuple(
        2**e for e in range(low.bit_length() - 1, high.bit_length()) if low <= 2**e <= high
    )


def default_cache_dir() -> str:
    """A private per-user directory; the cache is trusted code, so it must not be shared."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "topk-service" / "jax")


class Settings(BaseModel):
    """Configuration of one server process. Build it with :meth:`from_env`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    row_buckets: tuple[int, ...] = Field(
        _powers_of_two(1, 256), description="Row counts a device call is padded up to."
    )
    n_buckets: tuple[int, ...] = Field(
        _powers_of_two(16, 4096), description="Row lengths a device call is padded up to."
    )
    max_rows: int = Field(256, ge=1, description="Most rows in one request (413 beyond).")
    max_n: int = Field(4096, ge=1, description="Longest row of a request (413 beyond).")
    max_k: int = Field(4096, ge=1, description="Largest k (422 beyond).")
    max_body_bytes: int = Field(64 * 2**20, ge=1024, description="Largest body (413 beyond).")
    p_values: tuple[float, ...] = Field(
        (4 / 3, 1.5, 2.0), description="p values the sparse operator accepts (each compiles apart)."
    )

    batching: bool = Field(True, description="Coalesce concurrent requests into one device call.")
    max_batch_rows: int = Field(256, ge=1, description="Row budget of one device call.")
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "Longest wait of the oldest queued request before its batch runs. 0 (Triton's default):"
            " a batch holds what queued while the previous batches ran."
        ),
    )
    max_queued_requests: int = Field(1024, ge=1, description="Queue bound; 503 when full.")
    max_concurrent_batches: int = Field(
        2,
        ge=1,
        le=8,
        description=(
            "Batches in flight: the host work of one overlaps the device work of another. Beyond"
            " the first, only a batch that cannot grow (row budget full) is sent; a partial batch"
            " waits for the device, gathering what arrives meanwhile."
        ),
    )
    http_protocol: Literal["topk", "uvicorn"] = Field(
        "topk",
        description=(
            "topk: inference requests of at most 64 KiB are read and answered inside uvicorn's"
            " HTTP protocol, without an ASGI task per request (python -m service only); uvicorn:"
            " uvicorn's own protocol, every request through the ASGI app."
        ),
    )
    grpc_port: int | None = Field(
        8001,
        ge=0,
        le=65535,
        description=(
            "Port of OIP over gRPC (KServe v2 GRPCInferenceService) on the same host; empty turns"
            " gRPC off, 0 picks any free port. Needs the grpc extra (pip install '.[grpc]')."
        ),
    )
    grpc_max_concurrent_rpcs: int = Field(
        1024, ge=1, description="gRPC calls in progress at once; RESOURCE_EXHAUSTED beyond."
    )
    grpc_max_connection_age_s: float = Field(
        300.0,
        ge=0,
        description=(
            "A gRPC connection is closed (GOAWAY, 10 s grace) after this long, so that L4 load"
            " balancers spread long-lived clients over new replicas (0: never)."
        ),
    )
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After of a 503.")
    request_timeout_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "Longest a request may stay queued before it is dropped with 504 (0: no limit). A"
            " request's X-Request-Timeout-Ms header may lower it, never raise it."
        ),
    )

    warmup_operators: tuple[str, ...] = Field(
        ("sparse", "hard"), description="Operators compiled at start-up (e.g. sparse, hard, soft)."
    )
    warmup_outputs: tuple[str, ...] = Field(("mask",), description="Outputs compiled at start-up.")
    warmup_derivatives: tuple[Derivative, ...] = Field(
        ("none",), description="Derivative kernels compiled at start-up: none, jvp, vjp, both."
    )
    warmup_row_buckets: tuple[int, ...] | None = Field(
        None, description="Row buckets compiled at start-up (default: all row_buckets)."
    )
    warmup_n_buckets: tuple[int, ...] | None = Field(
        None, description="n buckets compiled at start-up (default: all n_buckets up to 1024)."
    )
    compile_on_demand: bool = Field(
        True,
        description="Compile a bucket outside the warm-up set at its first request (else 503).",
    )
    devices: int = Field(
        0,
        ge=0,
        description=(
            "Local devices the batch axis is sharded across (0: all of them). A bucket whose "
            "row count the device count does not divide runs on the first device."
        ),
    )
    compilation_cache_dir: str = Field(
        default_factory=default_cache_dir,
        description="Private JAX persistent compilation cache ('' turns it off).",
    )

    @field_validator(
        "row_buckets",
        "n_buckets",
        "p_values",
        "warmup_operators",
        "warmup_outputs",
        "warmup_derivatives",
        "warmup_row_buckets",
        "warmup_n_buckets",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for name in ("row_buckets", "n_buckets"):
            ladder = getattr(self, name)
            if not ladder or list(ladder) != sorted(set(ladder)) or ladder[0] < 1:
                raise ValueError(f"{name} must be increasing positive integers, got {ladder}")
        if self.max_rows > self.row_buckets[-1] or self.max_batch_rows > self.row_buckets[-1]:
            raise ValueError("max_rows and max_batch_rows must fit in the largest row bucket")
        if self.max_n > self.n_buckets[-1]:
            raise ValueError("max_n must fit in the largest n bucket")
        if any(p <= 1 for p in self.p_values) or not self.p_values:
            raise ValueError("p_values must be non-empty and every p > 1")
        for name, ladder in (("row", self.row_buckets), ("n", self.n_buckets)):
            warm = getattr(self, f"warmup_{name}_buckets")
            if warm is not None and not set(warm) <= set(ladder):
                raise ValueError(f"warmup_{name}_buckets must be a subset of {name}_buckets")
        return self

    @property
    def default_p(self) -> float:
        return self.p_values[0]

    @property
    def warm_row_buckets(self) -> tuple[int, ...]:
        return self.warmup_row_buckets if self.warmup_row_buckets is not None else self.row_buckets

    @property
    def warm_n_buckets(self) -> tuple[int, ...]:
        if self.warmup_n_buckets is not None:
            return self.warmup_n_buckets
        return tuple(n for n in self.n_buckets if n <= 1024)

    @property
    def limits(self) -> Limits:
        return Limits(
            max_rows=self.max_rows,
            max_n=self.max_n,
            max_k=self.max_k,
            max_body_bytes=self.max_body_bytes,
            max_batch_rows=self.max_batch_rows,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``TOPK_*`` variables of ``environ`` (default ``os.environ``), then overrides."""
        environ = os.environ if environ is None else environ
        ours = {
            key: value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX) and not _service_link(key, value)
        }
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = ours.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        unknown = sorted(
            key for key in ours if key[len(ENV_PREFIX) :].lower() not in cls.model_fields
        )
        if unknown:
            raise ValueError(f"unknown settings in the environment: {', '.join(unknown)}")
        values.update(overrides)
        return cls.model_validate(values)


# Kubernetes (and Docker links) give every pod variables for each Service of its namespace:
# a Service named "topk" or "topk-grpc" yields TOPK_SERVICE_HOST, TOPK_PORT=tcp://10.0.0.7:8000,
# TOPK_GRPC_PORT_8001_TCP_ADDR and so on. They are not settings: ignored, never an error.
_LINK_NAME = re.compile(r"^TOPK(_[A-Z0-9_]+)?_(SERVICE_(HOST|PORT)(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$")  # fmt: skip
_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://")


def _service_link(key: str, value: str) -> bool:
    """Whether ``key=value`` is a variable Kubernetes or Docker injects for a Service (link)."""
    return bool(_LINK_NAME.match(key) or (key.endswith("_PORT") and _LINK_VALUE.match(value)))
