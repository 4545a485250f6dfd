"""The child process that reads big JSON bodies: it answers exactly what the parent's own reader
answers (work units and refusals), and the parent reads on when the child is not up, has died or
is closed."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from service.errors import ApiError
from service.ingress.gate import Ingress
from service.ingress.headers import RequestHeaders
from service.ingress.reader_process import CHILD_NICENESS, ReaderProcess
from service.runtime import ServiceRuntime
from service.settings import Settings

UP_TIMEOUT_S = 120.0  # the child imports JAX's modules; two busy test workers slow it down


def ingress(reader: str = "process") -> Ingress:
    settings = Settings.from_env({"TOPK_BIG_BODY_READER": reader}, compilation_cache_dir="")
    return Ingress(ServiceRuntime(settings))


@pytest.fixture(scope="module")
def gate() -> Iterator[Ingress]:
    made = ingress()
    yield made
    made.close()


def headers(body: bytes, binary_header: int | None = None) -> RequestHeaders:
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if binary_header is not None:
        raw.append((b"inference-header-content-length", b"%d" % binary_header))
    return RequestHeaders(raw)


def up(reader: ReaderProcess) -> None:
    """Start the child (the first body is read here) and wait until it reads."""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while reader._running() is None:
        assert time.monotonic() < deadline, "the reader process did not start"
        time.sleep(0.05)


def outcome(gate: Ingress, route: str, body: bytes, child: bool) -> Any:
    """What decoding ``body`` gives: the work unit and plan, or the refusal's status and body."""
    endpoint = gate.endpoint(route)
    assert endpoint is not None
    decode = gate.reader_process.decode if child else gate.decode
    try:
        return decode(endpoint, headers(body), body)
    except ApiError as error:
        return ("refused", error.status, error.body.model_dump(), error.headers)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=True)
        )
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def big_x(rows: int = 64, n: int = 1024, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(rows, n)).round(4).tolist()


def v1_bodies() -> list[tuple[str, dict[str, Any]]]:
    x = big_x()
    ragged = [row[: 1024 - 3 * i] for i, row in enumerate(x)]
    with_bool: list[list[Any]] = [list(row) for row in x]
    with_bool[7][11] = True
    with_string: list[list[Any]] = [list(row) for row in x]
    with_string[3][5] = "1.5"
    return [
        ("/v1/topk", {"x": x, "k": 8}),
        (
            "/v1/topk",
            {
                "x": ragged,
                "k": list(range(1, 65)),
                "output": "values",
                "tangent": ragged,
                "cotangent": ragged,
            },
        ),
        ("/v1/topk", {"x": x, "k": 3, "operator": "soft", "epsilon": 0.5}),
        ("/v1/sort", {"x": x, "epsilon": [0.1] * 64}),
        ("/v1/rank", {"x": x}),
        ("/v1/isotonic", {"x": x}),
        # Refusals: each names its field.
        ("/v1/topk", {"x": with_bool, "k": 2}),
        ("/v1/topk", {"x": with_string, "k": 2}),
        ("/v1/topk", {"x": x, "k": 2000}),
        ("/v1/topk", {"x": x, "k": 2, "operator": "nope", "extra": 1}),
        ("/v1/topk", {"x": [row + [1e39] for row in x], "k": 2}),
        ("/v1/sort", {"x": x, "epsilon": -1}),
    ]


def oip_bodies() -> list[tuple[str, dict[str, Any]]]:
    flat = np.asarray(big_x()).ravel().tolist()
    tensor = {"name": "x", "shape": [64, 1024], "datatype": "FP32", "data": flat}
    k = {"name": "k", "shape": [64], "datatype": "INT32", "data": [4] * 64}
    return [
        ("/v2/models/topk/infer", {"id": "a", "inputs": [tensor, k]}),
        ("/v2/models/sort/infer", {"inputs": [tensor]}),
        ("/v2/models/topk/infer", {"inputs": [{**tensor, "shape": [64, 1000]}, k]}),
        ("/v2/models/topk/infer", {"inputs": [{**tensor, "datatype": "BF99"}, k]}),
        ("/v2/models/topk/infer", {"inputs": [tensor, {**k, "data": [0] * 64}]}),
    ]


def test_the_child_reads_every_body_as_the_parent_does(gate: Ingress) -> None:
    reader = gate.reader_process
    up(reader)
    cases = v1_bodies() + oip_bodies()
    refused = 0
    for route, request in cases:
        body = json.dumps(request).encode()
        assert len(body) > 64 * 1024, "a big body (the only kind sent to the child)"
        before = reader.decoded
        parent = outcome(gate, route, body, child=False)
        child = outcome(gate, route, body, child=True)
        assert reader.decoded == before + 1, f"{route}: read by the child"
        assert same(parent, child), (route, list(request))
        refused += parent[0] == "refused"
    assert 0 < refused < len(cases), "both answers are tried"


def test_a_body_that_is_not_json_is_refused_by_the_child_as_by_the_parent(gate: Ingress) -> None:
    up(gate.reader_process)
    body = b'{"x": [[' + b"1.0, " * 20_000 + b'1.0]], "k": 2'  # cut short: no closing brace
    parent = outcome(gate, "/v1/topk", body, child=False)
    assert parent[:2] == ("refused", 422) or parent[:2] == ("refused", 400)
    assert same(parent, outcome(gate, "/v1/topk", body, child=True))


def test_binary_tensors_are_read_here(gate: Ingress) -> None:
    """An OIP binary tensor is a view of the body: nothing to parse, nothing to send away."""
    reader = gate.reader_process
    up(reader)
    data = np.random.default_rng(1).normal(size=(64, 1024)).astype(np.float32)
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [64, 1024], "datatype": "FP32",
                     "parameters": {"binary_data_size": data.nbytes}},
                    {"name": "k", "shape": [64], "datatype": "INT32", "data": [4] * 64}]}
    ).encode()  # fmt: skip
    body = header + data.tobytes()
    endpoint = gate.endpoint("/v2/models/topk/infer")
    assert endpoint is not None
    before = reader.decoded
    work, _ = reader.decode(endpoint, headers(body, len(header)), body)
    assert reader.decoded == before, "not sent to the child"
    np.testing.assert_array_equal(np.asarray(work.x)[:, :1024], data)


def test_a_dead_child_costs_no_answer_and_is_replaced() -> None:
    made = ingress()
    try:
        reader = made.reader_process
        up(reader)
        route, request = v1_bodies()[0]
        body = json.dumps(request).encode()
        expected = outcome(made, route, body, child=False)
        pool = reader._pool
        assert pool is not None
        for pid in list(pool._processes):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        assert same(outcome(made, route, body, child=True), expected), "read here instead"
        assert reader._pool is not pool, "the broken pool is dropped"
        up(reader)
        before = reader.decoded
        assert same(outcome(made, route, body, child=True), expected)
        assert reader.decoded == before + 1, "a new child reads again"
    finally:
        made.close()


def test_thread_setting_and_close_keep_every_body_here() -> None:
    threaded = ingress("thread")
    route, request = v1_bodies()[0]
    body = json.dumps(request).encode()
    expected = outcome(threaded, route, body, child=False)
    for _ in range(3):
        assert same(outcome(threaded, route, body, child=True), expected)
    assert threaded.reader_process._pool is None and threaded.reader_process.decoded == 0

    closed = ingress()
    up(closed.reader_process)
    pool = closed.reader_process._pool
    assert pool is not None
    children = list(pool._processes.values())
    closed.close()
    assert all(not child.is_alive() for child in children), "close stops the child"
    assert same(outcome(closed, route, body, child=True), expected)
    assert closed.reader_process._pool is None, "and starts no other"


def test_the_child_yields_the_cpu_to_the_event_loop(gate: Ingress) -> None:
    reader = gate.reader_process
    up(reader)
    assert reader._pool is not None
    [pid] = list(reader._pool._processes)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(mine + CHILD_NICENESS, 19)


def test_a_child_that_cannot_start_leaves_every_body_here(monkeypatch: pytest.MonkeyPatch) -> None:
    made = ingress()
    route, request = v1_bodies()[0]
    body = json.dumps(request).encode()
    expected = outcome(made, route, body, child=False)

    def no_semaphores(*_args: object, **_kwargs: object) -> None:
        raise OSError(38, "Function not implemented")  # what a sandbox without /dev/shm says

    monkeypatch.setattr("service.ingress.reader_process.ProcessPoolExecutor", no_semaphores)
    for _ in range(2):
        assert same(outcome(made, route, body, child=True), expected)
    assert not made.reader_process.enabled and made.reader_process._pool is None
