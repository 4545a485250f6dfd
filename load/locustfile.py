"""Locust scenarios for ``POST /v1/topk`` that look like the service's real callers.

Pick a scenario by naming its User class (``locust -f load/locustfile.py RouterUser``), or let
``load/run.py --scenario router`` do it. Every response body is checked, not only its status: a
200 with a wrong shape is a failure. The ``quitting`` listener below is the CI gate.

Environment knobs (read once at import, so every Locust process agrees):

- ``LOAD_PACE``: requests per second per user; ``0`` (default) is a closed loop (a user sends
  its next request as soon as the last one answered). A closed loop hides a stalled server
  (coordinated omission), so the gate run uses a paced load too.
- ``LOAD_PRUNING_N``: length of the pruning vector (default 131072; 10^5–10^6 in real use).
- ``LOAD_P95_BUDGET_MS``: override of the scenario's p95 budget below.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, events, task

PACE = float(os.environ.get("LOAD_PACE", "0"))
PRUNING_N = int(os.environ.get("LOAD_PRUNING_N", "131072"))

# p95 budgets (ms) per User class, measured on a 2-core shared CPU box with headroom; the gate
# fails above them. A GPU host should set tighter ones via LOAD_P95_BUDGET_MS.
P95_BUDGET_MS = {
    "RouterUser": 500,
    "PruningUser": 3000,
    "ClassificationUser": 1000,
    "MixedUser": 3000,
    "SoakUser": 5000,
}
DEFAULT_P95_BUDGET_MS = 3000


def _wait_time() -> Any:
    return constant_throughput(PACE) if PACE > 0 else constant(0)


def _rows(n_rows: int, n: int) -> list[list[float]]:
    return [[random.gauss(0.0, 1.0) for _ in range(n)] for _ in range(n_rows)]


# Requests are drawn from a small per-process pool of pre-encoded bodies: building and encoding
# 10^4–10^5 random floats per request would make the load generator, not the server, the
# bottleneck (and Locust's clock runs while a ``json=`` body is encoded).
POOL_SIZE = 32
_pools: dict[str, list[tuple[dict[str, Any], bytes]]] = {}


def _pooled(
    kind: str, make: Callable[[], dict[str, Any]], size: int = POOL_SIZE
) -> tuple[dict[str, Any], bytes]:
    pool = _pools.setdefault(kind, [])
    if len(pool) < size:
        request = make()
        pool.append((request, json.dumps(request).encode()))
        return pool[-1]
    return random.choice(pool)


def _router_request() -> dict[str, Any]:
    return {
        "x": _rows(random.choice((64, 128, 256)), random.choice((8, 16, 32, 64))),
        "k": random.choice((1, 2)),
        "operator": random.choice(("hard", "sparse")),
        "output": "mask",
    }


def _pruning_request() -> dict[str, Any]:
    k = max(1, PRUNING_N // 100)
    return {"x": _rows(1, PRUNING_N), "k": k, "operator": "hard", "output": "magnitude"}


def _classification_request() -> dict[str, Any]:
    n_rows, classes = random.choice((8, 16, 32)), random.choice((10, 100))
    return {
        "x": _rows(n_rows, classes),
        "k": [random.randint(1, 5) for _ in range(n_rows)],
        "operator": "sparse",
        "output": "mask",
        "epsilon": 1.0,
        "tangent": _rows(n_rows, classes),
        "cotangent": _rows(n_rows, classes),
    }


def _check_rows(body: Any, request: dict[str, Any], exact_k: bool) -> str | None:
    """Why the body does not answer ``request``, or None if it does."""
    rows = body.get("rows") if isinstance(body, dict) else None
    if not isinstance(rows, list) or len(rows) != len(request["x"]):
        return f"expected {len(request['x'])} rows"
    ks = request["k"] if isinstance(request["k"], list) else [request["k"]] * len(rows)
    for row, x, k in zip(rows, request["x"], ks, strict=True):
        n = len(x)
        indices, values = row.get("indices"), row.get("values")
        if row.get("n") != n or row.get("k") != k:
            return f"row n/k {row.get('n')}/{row.get('k')} != {n}/{k}"
        if len(indices) != len(values) or not all(0 <= i < n for i in indices):
            return "indices out of range or not paired with values"
        if exact_k and len(indices) != k:
            return f"hard top-k kept {len(indices)} entries, not {k}"
        if "tangent" in request and len(row.get("jvp") or []) != len(indices):
            return "jvp missing or not one per support entry"
        if "cotangent" in request and len(row.get("vjp") or []) != n:
            return "vjp missing or not one per entry"
    return None


class TopKUser(FastHttpUser):
    """Shared plumbing: post a request and check its body."""

    abstract = True
    wait_time = _wait_time()
    # Pruning bodies are megabytes and a cold bucket compiles: a generous network timeout, so
    # slowness shows up in the latency gate instead of as connection errors.
    network_timeout = 120.0
    connection_timeout = 10.0

    def post_topk(
        self, name: str, request: dict[str, Any], exact_k: bool = False, body: bytes | None = None
    ) -> None:
        """``body``: ``request`` already serialised (Locust's clock runs while it encodes)."""
        payload: dict[str, Any] = {"data": body} if body is not None else {"json": request}
        with self.rest("POST", "/v1/topk", name=name, **payload) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                if response.status_code == 503:  # what a well-behaved client does
                    time.sleep(float(response.headers.get("retry-after") or 1))
                return
            problem = _check_rows(response.js, request, exact_k)
            if problem:
                response.failure(problem)

    def router_batch(self) -> None:
        """An MoE router: 64–256 tokens × 8–64 experts, top-1 or top-2 gates."""
        request, body = _pooled("router", _router_request)
        operator = request["operator"]
        self.post_topk(f"router {operator}", request, exact_k=operator == "hard", body=body)

    def pruning_vector(self) -> None:
        """Magnitude pruning: keep the largest |w| of one long weight vector (1% of it)."""
        request, body = _pooled("pruning", _pruning_request, size=1)
        self.post_topk("pruning", request, exact_k=True, body=body)

    def classification(self) -> None:
        """Top-k of class scores with a JVP (tangent) and a VJP (cotangent), as in training."""
        request, body = _pooled("classification", _classification_request)
        self.post_topk("classification jvp+vjp", request, body=body)


class RouterUser(TopKUser):
    @task
    def route(self) -> None:
        self.router_batch()


class PruningUser(TopKUser):
    @task
    def prune(self) -> None:
        self.pruning_vector()


class ClassificationUser(TopKUser):
    @task
    def classify(self) -> None:
        self.classification()


class MixedUser(TopKUser):
    """Mostly router traffic, some classification, a rare pruning call (a shared service)."""

    @task(20)
    def route(self) -> None:
        self.router_batch()

    @task(5)
    def classify(self) -> None:
        self.classification()

    @task(1)
    def prune(self) -> None:
        self.pruning_vector()


def _small_request() -> dict[str, Any]:
    return {"x": _rows(1, 64), "k": 2}


def _medium_request() -> dict[str, Any]:
    return {"x": _rows(32, 64), "k": [random.randint(1, 8) for _ in range(32)]}


def _big_request() -> dict[str, Any]:
    return {"x": _rows(256, 1024), "k": 8}  # ~5 MB of JSON (17-digit floats), a full batch


# Requests a client gets wrong, with the status and the field the answer must name.
BAD_REQUESTS: tuple[tuple[str, bytes, str, int, str], ...] = (
    ("bad: truncated JSON", b'{"x": [[1.0, 2.0', "application/json", 422, "body"),
    ("bad: k > n", b'{"x": [[1.0, 2.0]], "k": 3}', "application/json", 422, "k"),
    ("bad: NaN", b'{"x": [[1.0, NaN]], "k": 1}', "application/json", 422, "x[0][1]"),
    ("bad: extra field", b'{"x": [[1.0]], "k": 1, "kk": 1}', "application/json", 422, "kk"),
    ("bad: content type", b'{"x": [[1.0]], "k": 1}', "text/plain", 415, "content-type"),
)


class SoakUser(TopKUser):
    """Hours of a shared service: mostly small requests, some batches, a rare big body (a full
    256 × 1024 batch, ~5 MB of JSON), and clients that get it wrong (each must get its 4xx naming
    the field). A 503 is a failure, after which the user waits its ``Retry-After`` as a
    well-behaved client does (so a saturation probe measures what is served, not how fast
    refusals come back)."""

    @task(40)
    def small(self) -> None:
        request, body = _pooled("small", _small_request)
        self.post_topk("small 1x64", request, body=body)

    @task(8)
    def medium(self) -> None:
        request, body = _pooled("medium", _medium_request)
        self.post_topk("batch 32x64", request, body=body)

    @task(1)
    def big(self) -> None:
        request, body = _pooled("big", _big_request, size=2)
        self.post_topk("big 256x1024", request, body=body)

    @task(4)
    def bad(self) -> None:
        name, body, content_type, status, field = random.choice(BAD_REQUESTS)
        headers = {"content-type": content_type}
        with self.rest("POST", "/v1/topk", name=name, data=body, headers=headers) as response:
            if response.status_code != status:
                response.failure(f"expected {status}, got {response.status_code}")
                return
            fields = [e.get("field") for e in (response.js or {}).get("errors", [])]
            if field not in fields:
                response.failure(f"the answer names {fields}, not {field!r}")
            else:
                response.success()


def p95_budget_ms(user_classes: list[type]) -> float:
    if "LOAD_P95_BUDGET_MS" in os.environ:
        return float(os.environ["LOAD_P95_BUDGET_MS"])
    return max(P95_BUDGET_MS.get(cls.__name__, DEFAULT_P95_BUDGET_MS) for cls in user_classes)


@events.quitting.add_listener
def gate(environment: Any, **_: Any) -> None:
    """CI gate: any failed request, or p95 above the budget, makes Locust exit non-zero."""
    total = environment.stats.total
    budget = p95_budget_ms(list(environment.user_classes))
    p95 = total.get_response_time_percentile(0.95) or 0.0
    reasons = []
    if total.num_requests == 0:
        reasons.append("no requests were made")
    if total.fail_ratio > 0:
        reasons.append(f"failure ratio {total.fail_ratio:.4f} > 0")
    if p95 > budget:
        reasons.append(f"p95 {p95:.0f} ms > budget {budget:.0f} ms")
    verdict = "FAIL: " + "; ".join(reasons) if reasons else "PASS"
    print(
        f"GATE {verdict} (requests={total.num_requests}, p95={p95:.0f} ms, budget={budget:.0f} ms)"
    )
    environment.process_exit_code = 1 if reasons else 0
