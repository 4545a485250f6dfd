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
from service.device.buckets import ShapeBucket

ENV_PREFIX = "TOPK_"
Derivative = Literal["none", "jvp", "vjp", "both"]

# Default limits, from the use cases the README names: magnitude pruning of a 2^20-entry weight
# vector, routers of thousands of tokens x 8-256 experts, classification over ~1,000 classes.
DEFAULT_MAX_ROWS = 4096
DEFAULT_MAX_N = 2**20
DEFAULT_MAX_ENTRIES = 2**20
# The longest JSON number a client writes for a float (Python's repr of a float64, e.g.
# -2.2250738585072014e-308, 24 characters) and its separator (json.dumps writes ", ").
JSON_NUMBER_BYTES = 26
JSON_ENVELOPE_BYTES = 4096  # field names, operator, output, p, solver, brackets


def largest_json_body(max_entries: int, max_rows: int) -> int:
    """The body of the largest /v1 request these limits accept, rounded up to a MiB: ``x``,
    ``tangent`` and ``cotangent`` of ``max_entries`` numbers each, and per row brackets, a ``k``
    and an ``epsilon``."""
    numbers = 3 * max_entries * JSON_NUMBER_BYTES
    per_row = max_rows * (3 * len("[], ") + len("1048576, ") + JSON_NUMBER_BYTES)
    total = numbers + per_row + JSON_ENVELOPE_BYTES
    return -(-total // 2**20) * 2**20


def _powers_of_two(low: int, high: int) -> tuple[int, ...]:
    return tuple(
        2**e for e in range(low.bit_length() - 1, high.bit_length()) if low <= 2**e <= high
    )


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
        _powers_of_two(1, DEFAULT_MAX_ROWS), description="Row counts a device call is padded up to."
    )
    n_buckets: tuple[int, ...] = Field(
        _powers_of_two(16, DEFAULT_MAX_N), description="Row lengths a device call is padded up to."
    )
    max_rows: int = Field(
        DEFAULT_MAX_ROWS, ge=1, description="Most rows in one request (413 beyond)."
    )
    max_n: int = Field(DEFAULT_MAX_N, ge=1, description="Longest row of a request (413 beyond).")
    max_k: int = Field(DEFAULT_MAX_N, ge=1, description="Largest k (422 beyond).")
    max_entries: int = Field(
        DEFAULT_MAX_ENTRIES,
        ge=1,
        description=(
            "Most entries in one request, rows x its longest row (413 beyond); also the most a"
            " device call holds (a batch with more goes in several calls)."
        ),
    )
    max_body_bytes: int = Field(
        0,
        ge=0,
        description=(
            "Largest body (413 beyond); 0: the largest /v1 JSON request the limits allow"
            " (max_entries numbers in x, tangent and cotangent, 26 bytes each)."
        ),
    )
    p_values: tuple[float, ...] = Field(
        (4 / 3, 2.0),
        description=(
            "p values the sparse operator accepts, the first the default. Each is compiled into"
            " every cover (4/3 and 2 have closed forms; any other p, e.g. 1.5, adds ~3.5 CPU-s"
            " per cover to a cold start)."
        ),
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
            " 0: 16 × max_entries (8 of the largest requests, rows padded to their n bucket)."
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
    big_body_reader: Literal["process", "thread"] = Field(
        "process",
        description=(
            "Where JSON bodies above 64 KiB are parsed: in one child process, started by the first"
            " such body (parsing holds the GIL the event loop needs), or on the bodies' thread."
        ),
    )
    big_body_share: float = Field(
        0.15,
        gt=0,
        le=1,
        description=(
            "Most of the time the thread reading bodies above 64 KiB (and writing their answers)"
            " may take while small requests are arriving; 1: no limit."
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

    cover_buckets: tuple[str, ...] = Field(
        ("16x1024", f"1x{DEFAULT_MAX_N}"),
        description=(
            "ROWSxN buckets of the cover kernels, built before the server is ready: each holds"
            " every operator variant, and together they serve every request the limits allow"
            " (the largest n must reach max_n; those past the first that does are not built)."
        ),
    )
    compile_threads: int = Field(
        2, ge=1, le=16, description="Threads building the cover kernels at start-up."
    )
    warmup_operators: tuple[str, ...] = Field(
        (),
        description=(
            "Operators whose exact kernels are built in the background once the server is ready"
            " (default: none; each kernel is built at the first request that needs it)."
        ),
    )
    warmup_outputs: tuple[str, ...] = Field(("mask",), description="Outputs of those kernels.")
    warmup_derivatives: tuple[Derivative, ...] = Field(
        ("none",),
        description="none: kernels without derivative lanes; jvp, vjp, both: with them.",
    )
    warmup_row_buckets: tuple[int, ...] | None = Field(
        None, description="Row buckets of those kernels (default: all row_buckets)."
    )
    warmup_n_buckets: tuple[int, ...] | None = Field(
        None, description="n buckets of those kernels (default: all n_buckets up to 1024)."
    )
    compile_on_demand: bool = Field(
        True,
        description=(
            "Build a shape's exact kernel in the background at its first request (served by a"
            " cover meanwhile); false: covers only, nothing compiles once ready."
        ),
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
        description=(
            "Private directory of the executable store: compiled kernels a restart loads "
            "('' turns it off, and every start compiles)."
        ),
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
        "cover_buckets",
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
        if self.max_n > self.n_buckets[-1]:
            raise ValueError("max_n must fit in the largest n bucket")
        if not self.max_n <= self.max_entries or not self.max_rows <= self.max_entries:
            raise ValueError("max_entries must hold a longest row, and max_rows rows of one entry")
        covers = [ShapeBucket.parse(text) for text in self.cover_buckets]
        if not covers or [b.n for b in covers] != sorted({b.n for b in covers}):
            raise ValueError("cover_buckets must be ROWSxN buckets in increasing n")
        if covers[-1].n < self.max_n:
            raise ValueError(f"the cover buckets must reach max_n={self.max_n} (a row that long)")
        if any(p <= 1 for p in self.p_values) or not self.p_values:
            raise ValueError("p_values must be non-empty and every p > 1")
        for name, ladder in (("row", self.row_buckets), ("n", self.n_buckets)):
            warm = getattr(self, f"warmup_{name}_buckets")
            if warm is not None and not set(warm) <= set(ladder):
                raise ValueError(f"warmup_{name}_buckets must be a subset of {name}_buckets")
        body = self.max_body_bytes or largest_json_body(self.max_entries, self.max_rows)
        if body < 1024:
            raise ValueError("max_body_bytes must be at least 1024 (or 0: derived)")
        derived: dict[str, object] = {
            "max_body_bytes": body,
            "max_body_bytes_in_flight": self.max_body_bytes_in_flight or body,
            # 8 of the largest requests (a row padded to its n bucket is at most 2x longer).
            "max_queued_elements": self.max_queued_elements or 16 * self.max_entries,
            "api_keys": _with_file(self.api_keys, self.api_keys_file, "api_keys"),
            "metrics_api_keys": _with_file(
                self.metrics_api_keys, self.metrics_api_keys_file, "metrics_api_keys"
            ),
        }
        for name, value in derived.items():  # frozen: filled in once, here
            object.__setattr__(self, name, value)
        return self

    @property
    def covers(self) -> tuple[ShapeBucket, ...]:
        """The cover buckets, parsed, up to the first that holds a row of ``max_n`` (the ones
        past it could never serve a request: a smaller limit builds fewer covers)."""
        covers: list[ShapeBucket] = []
        for text in self.cover_buckets:
            covers.append(ShapeBucket.parse(text))
            if covers[-1].n >= self.max_n:
                break
        return tuple(covers)

    @property
    def body_limit(self) -> int:
        """The largest body (``max_body_bytes``, derived from the limits when it was set to 0)."""
        return self.max_body_bytes

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
            max_entries=self.max_entries,
            max_body_bytes=self.body_limit,
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
