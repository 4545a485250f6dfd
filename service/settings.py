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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from api.limits import Limits

ENV_PREFIX = "TOPK_"
Derivative = Literal["none", "jvp", "vjp", "both"]


def _powers_of_two(low: int, high: int) -> tuple[int, ...]:
    return tuple(
        2**e for e in range(low.bit_length() - 1, high.bit_length()) if low <= 2**e <= high
    )


# The largest /v1 JSON body the size limits allow: x, tangent and cotangent (three matrices of
# max_rows × max_n numbers), each number written as the longest float64 literal (24 characters,
# e.g. -2.2250738585072014e-308) plus the ", " that Python's json.dumps puts between numbers, and
# 64 KiB for the rest (brackets, k and epsilon per row, the other fields).
JSON_NUMBER_BYTES = 24 + 2
JSON_MATRICES = 3
JSON_SLACK_BYTES = 64 * 1024


def json_body_bytes(max_rows: int, max_n: int) -> int:
    """The default body cap: 3 × max_rows × max_n × 26 + 64 KiB (81,854,464 at 256 × 4096)."""
    return JSON_MATRICES * max_rows * max_n * JSON_NUMBER_BYTES + JSON_SLACK_BYTES


def _with_file(keys: tuple[SecretStr, ...], path: str, name: str) -> tuple[SecretStr, ...]:
    """``keys`` and those of the file at ``path`` (one per line; blank lines and # comments skipped).

    A key is printable ASCII without spaces (an HTTP token): anything else could never be sent
    in an Authorization header, so it is refused here rather than never matching. No error says
    what a key is."""
    found = [(name, key) for key in keys]
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as error:
            raise ValueError(f"{name}_file: cannot read {path!r} ({error.strerror})") from None
        keyed = [line.strip() for line in lines if line.strip()[:1] not in ("", "#")]
        found += [(f"{name}_file", SecretStr(line)) for line in keyed]
    for number, (source, key) in enumerate(found, start=1):
        secret = key.get_secret_value()
        if not secret or not all(33 <= ord(c) <= 126 for c in secret):
            raise ValueError(f"{source}: key {number} is not printable ASCII without spaces")
    return tuple(key for _, key in found)


def _secrets(raw: str) -> tuple[SecretStr, ...]:
    return tuple(SecretStr(part.strip()) for part in raw.split(",") if part.strip())


SECRET_SETTINGS = ("api_keys", "metrics_api_keys")  # read masked, so no error message shows them


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
    max_body_bytes: int = Field(
        0,
        ge=0,
        description=(
            "Largest body (413 beyond). 0: the largest /v1 JSON body the size limits allow,"
            " derived from max_rows and max_n (see json_body_bytes)."
        ),
    )
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

    max_queued_elements: int = Field(
        0,
        ge=0,
        description=(
            "Work bound of one batch key's queue, in padded entries (rows × n bucket); 503 beyond."
            " 0: 8 full batches of the longest rows (8 × max_batch_rows × max_n)."
        ),
    )
    max_body_bytes_in_flight: int = Field(
        0,
        ge=0,
        description=(
            "Memory budget of the bodies above 64 KiB being read, queued or answered; a body that"
            " would exceed it gets 503 on its Content-Length, before it is read (one body is always"
            " let through). 0: max_body_bytes."
        ),
    )
    big_body_share: float = Field(
        0.15,
        gt=0,
        le=1,
        description=(
            "Most of the time the thread decoding bodies above 64 KiB may take while small requests"
            " are arriving (JSON decoding holds the GIL the event loop needs); 1: no limit."
        ),
    )

    # The connection guard (service/ingress/guard.py; python -m service only).
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Largest request line plus headers (431 beyond)."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Longest time from a connection's opening, or a request's first byte, to the end of"
            " its headers (408, then the connection is closed)."
        ),
    )
    body_idle_timeout_s: float = Field(
        10.0, gt=0, description="Longest pause between two reads of a request body (408, closed)."
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Longest time to read a whole body after its headers (408, closed)."
    )
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="Idle time a kept-alive connection is held between requests (above proxies' 60 s).",
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description=(
            "Open connections served in full. Beyond it a connection may ask one probe"
            " (/healthz, /readyz, /v2/health/*, /metrics) and gets 503 for anything else."
        ),
    )
    probe_connections: int = Field(
        32,
        ge=0,
        description="Connections beyond max_connections kept for probes; beyond both, closed at once.",
    )

    drain_delay_s: float = Field(
        5.0,
        ge=0,
        description=(
            "On SIGTERM: seconds readiness is false while the server keeps serving (load balancers"
            " stop routing meanwhile), before it stops accepting and drains."
        ),
    )
    api_keys: tuple[SecretStr, ...] = Field(
        (),
        description=(
            "Bearer keys, comma separated: when any is set (here or in api_keys_file), every"
            " /v1 and /v2 route but the health probes needs 'Authorization: Bearer <key>'."
        ),
    )
    api_keys_file: str = Field("", description="A file of bearer keys, one per line (# comments).")
    metrics_api_keys: tuple[SecretStr, ...] = Field(
        (), description="Bearer keys of GET /metrics, comma separated (none: /metrics is open)."
    )
    metrics_api_keys_file: str = Field("", description="A file of /metrics keys, one per line.")

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

    @field_validator(*SECRET_SETTINGS, mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        return _secrets(value) if isinstance(value, str) else value

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
        body = self.max_body_bytes or json_body_bytes(self.max_rows, self.max_n)
        if body < 1024:
            raise ValueError("max_body_bytes must be at least 1024 (or 0: derived)")
        derived: dict[str, object] = {
            "max_body_bytes": body,
            "max_body_bytes_in_flight": self.max_body_bytes_in_flight or body,
            "max_queued_elements": self.max_queued_elements or 8 * self.max_batch_rows * self.max_n,
            "api_keys": _with_file(self.api_keys, self.api_keys_file, "api_keys"),
            "metrics_api_keys": _with_file(
                self.metrics_api_keys, self.metrics_api_keys_file, "metrics_api_keys"
            ),
        }
        for name, value in derived.items():  # frozen: filled in once, here
            object.__setattr__(self, name, value)
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
            max_header_bytes=self.max_header_bytes,
            body_idle_timeout_s=self.body_idle_timeout_s,
            keep_alive_s=self.keep_alive_s,
            authenticated=bool(self.api_keys),
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
                values[name] = _secrets(raw) if name in SECRET_SETTINGS else raw
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
