"""uvicorn's protocol with inference requests answered in place: the same answers as the ASGI gate
(under plain uvicorn), and uvicorn's connection handling (keep-alive, pipelining, close,
100-continue) intact."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from service.ingress.asgi import TopKApp
from tests.service.ingress.test_deadlines import wait_for
from tests.service.serving import ServerThread, metric, serving

Response = tuple[int, dict[str, str], bytes]

BODIES: list[object] = [
    {"x": [[0.5, -1.0, 2.0, 3.5]], "k": 2},
    {"x": [[0.1, 0.2, 0.3], [4.0], [1.0, 2.0]], "k": [2, 1, 1], "operator": "hard"},
    {"x": [[0.1, -0.2, 0.3]], "k": 2, "output": "magnitude", "epsilon": 0.5},
    {"x": [[1, 2, 3, 4]], "k": 1, "p": 2, "solver": "pav"},
    {"x": [[0.5, -1.0, 2.0, 3.5]], "k": 2, "tangent": [[1.0, 0.0, -1.0, 0.5]]},
    {
        "x": [[0.1, 0.2, 0.3], [4.0, 1.0]],
        "k": 1,
        "operator": "soft",
        "tangent": [[1, 0, 0], [0, 1]],
        "cotangent": [[0.5, 0.5, 0.5], [1.0, -1.0]],
    },
]
REFUSED: list[object] = [
    {"x": [[0.5, True]], "k": 1},
    {"x": [[0.5, 1.0]], "k": 0},
    {"x": [[1e39, 1.0]], "k": 1},
    {"x": [[0.5, 1.0]], "k": 1, "extra": 1},
    [1, 2],
]


@pytest.fixture(scope="module")
def protocol_server() -> Iterator[ServerThread]:
    with serving(http_protocol="topk") as running:
        yield running


@pytest.fixture(scope="module")
def asgi_server() -> Iterator[ServerThread]:
    with serving(http_protocol="uvicorn") as running:
        yield running


@pytest.fixture
def asgi_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the requests that reach the ASGI app (TopKApp) during the test."""
    calls: list[str] = []
    original = TopKApp.__call__

    async def counted(self: TopKApp, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            calls.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(TopKApp, "__call__", counted)
    return calls


def request(
    body: bytes,
    *extra: str,
    version: str = "1.1",
    content_type: str = "application/json",
    path: str = "/v1/topk",
) -> bytes:
    head = [
        f"POST {path} HTTP/{version}",
        "Host: test",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_responses(client: socket.socket, count: int) -> list[Response]:
    """``count`` responses read off ``client``, skipping interim 100 Continue answers."""
    buffer = b""
    responses: list[Response] = []

    def fill() -> None:
        nonlocal buffer
        chunk = client.recv(65536)
        assert chunk, "the server closed the connection early"
        buffer += chunk

    while len(responses) < count:
        while b"\r\n\r\n" not in buffer:
            fill()
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status == 100:
            continue
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.lower()] = value.strip()
        length = int(headers["content-length"])
        while len(buffer) < length:
            fill()
        responses.append((status, headers, buffer[:length]))
        buffer = buffer[length:]
    return responses


def exchange(server: ServerThread, raw: bytes, count: int = 1) -> list[Response]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(raw)
        return read_responses(client, count)


def closed_by_server(client: socket.socket) -> bool:
    client.settimeout(10)
    return client.recv(1) == b""


@pytest.mark.parametrize("body", BODIES)
def test_a_plain_request_is_answered_in_the_protocol_exactly_as_on_the_asgi_path(
    protocol_server: ServerThread, asgi_server: ServerThread, asgi_calls: list[str], body: object
) -> None:
    raw = request(json.dumps(body).encode())
    [(status, headers, answer)] = exchange(protocol_server, raw)
    [(asgi_status, asgi_headers, asgi_answer)] = exchange(asgi_server, raw)
    assert status == asgi_status == 200, answer
    assert answer == asgi_answer
    assert headers["content-type"] == asgi_headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(answer)
    assert {"date", "server"} <= headers.keys()
    assert asgi_calls == ["/v1/topk"], "only the ASGI server's request reaches the app"


DENSE: list[tuple[str, object]] = [
    ("/v1/sort", {"x": [[0.5, -1.0, 2.0], [3.0, 1.0]], "descending": True, "epsilon": 0.5}),
    ("/v1/rank", {"x": [[0.5, -1.0, 2.0]], "regularization": "kl", "tangent": [[1, 0, 0]]}),
    ("/v1/isotonic", {"x": [[3.0, 1.0, 2.0]], "increasing": True, "cotangent": [[1, 1, 1]]}),
]


@pytest.mark.parametrize(("path", "body"), DENSE)
def test_a_dense_request_is_answered_in_the_protocol_exactly_as_on_the_asgi_path(
    protocol_server: ServerThread,
    asgi_server: ServerThread,
    asgi_calls: list[str],
    path: str,
    body: object,
) -> None:
    encoded = json.dumps(body).encode()
    [(status, _, answer)] = exchange(protocol_server, request(encoded, path=path))
    assert asgi_calls == [], "the protocol answered it: the app was never called"
    vendor = request(encoded, content_type="application/vnd.topk+json", path=path)
    [(vendor_status, _, vendor_answer)] = exchange(asgi_server, vendor)
    [(asgi_status, _, asgi_answer)] = exchange(asgi_server, request(encoded, path=path))
    assert status == vendor_status == asgi_status == 200, answer
    assert answer == vendor_answer == asgi_answer


def test_an_oip_request_is_answered_in_the_protocol_exactly_as_on_the_asgi_path(
    protocol_server: ServerThread, asgi_server: ServerThread, asgi_calls: list[str]
) -> None:
    body = {
        "id": "7",
        "parameters": {"k": 2},
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1, 2, 3.5]}],
    }
    raw = request(json.dumps(body).encode(), path="/v2/models/topk/infer")
    [(status, _, answer)] = exchange(protocol_server, raw)
    assert asgi_calls == [], "the protocol answered it: the app was never called"
    [(asgi_status, _, asgi_answer)] = exchange(asgi_server, raw)
    assert status == asgi_status == 200, answer
    assert answer == asgi_answer


def test_post_topk_is_v1_topk_through_both_gates_with_the_same_labels(
    protocol_server: ServerThread, asgi_server: ServerThread, asgi_calls: list[str]
) -> None:
    """``/topk`` is the current version's name of ``/v1/topk``: the same endpoint, so the same
    answer, the same refusals and the same metrics labels, in the protocol and on the ASGI path."""
    accepted, refused = json.dumps(BODIES[1]).encode(), json.dumps(REFUSED[1]).encode()
    sample = 'topk_requests_total{operator="hard",route="/v1/topk",status="200"}'
    answers = []
    for server in (protocol_server, asgi_server):
        before = metric(server, sample)
        [(status, _, current)] = exchange(server, request(accepted, path="/topk"))
        [(_, _, versioned)] = exchange(server, request(accepted))
        assert status == 200 and current == versioned
        assert metric(server, sample) == before + 2
        [(status, _, current)] = exchange(server, request(refused, path="/topk"))
        [(_, _, versioned)] = exchange(server, request(refused))
        assert status == 422 and current == versioned
        answers.append(current)
    assert answers[0] == answers[1]
    assert [path for path in asgi_calls if path != "/metrics"] == ["/topk", "/v1/topk"] * 2


@pytest.mark.parametrize("body", REFUSED)
def test_a_refused_body_is_answered_in_the_protocol_exactly_as_on_the_asgi_path(
    protocol_server: ServerThread, asgi_server: ServerThread, asgi_calls: list[str], body: object
) -> None:
    raw = request(json.dumps(body).encode())
    [(status, _, answer)] = exchange(protocol_server, raw)
    [(asgi_status, _, asgi_answer)] = exchange(asgi_server, raw)
    assert status == asgi_status == 422
    assert answer == asgi_answer
    assert json.loads(answer)["errors"][0]["field"]
    assert asgi_calls == ["/v1/topk"], "read once, in the protocol: only the ASGI server's call"


def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    protocol_server: ServerThread, asgi_calls: list[str]
) -> None:
    bodies = [json.dumps({"x": [[3.0, 1.0, 2.0, 0.5]], "k": k}).encode() for k in (1, 2, 3)]
    with socket.create_connection(("127.0.0.1", protocol_server.port), timeout=30) as client:
        for body in bodies:  # one after the other on one connection
            client.sendall(request(body))
            [(status, headers, _)] = read_responses(client, 1)
            assert status == 200 and "connection" not in headers
        client.sendall(b"".join(request(body) for body in bodies))  # pipelined
        answers = read_responses(client, 3)
        assert [len(json.loads(a)["rows"][0]["indices"]) for _, _, a in answers] == [1, 2, 3]
        client.sendall(request(bodies[0], "Connection: close"))
        [(status, headers, _)] = read_responses(client, 1)
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_server(client)
    # Only the pipelined requests that arrived while another was answered went through the app.
    assert len(asgi_calls) <= 2


def test_an_http_1_0_request_is_answered_and_the_connection_closed(
    protocol_server: ServerThread,
) -> None:
    body = json.dumps(BODIES[0]).encode()
    with socket.create_connection(("127.0.0.1", protocol_server.port), timeout=30) as client:
        client.sendall(request(body, version="1.0"))
        [(status, headers, _)] = read_responses(client, 1)
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_server(client)


def test_expect_continue_and_large_bodies_take_the_asgi_path(
    protocol_server: ServerThread, asgi_calls: list[str]
) -> None:
    body = json.dumps(BODIES[0]).encode()
    [(_, _, expected)] = exchange(protocol_server, request(body))
    with socket.create_connection(("127.0.0.1", protocol_server.port), timeout=30) as client:
        head = request(body, "Expect: 100-continue")[: -len(body)]
        client.sendall(head)
        assert client.recv(64).startswith(b"HTTP/1.1 100")
        client.sendall(body)
        [(status, _, answer)] = read_responses(client, 1)
    assert status == 200 and answer == expected
    padded = b" " * (70 * 1024) + body  # still the same JSON document, above the 64 KiB cut
    [(status, _, answer)] = exchange(protocol_server, request(padded))
    assert status == 200 and answer == expected
    assert asgi_calls == ["/v1/topk", "/v1/topk"]


def test_a_full_queue_answers_503_with_retry_after_from_the_protocol() -> None:
    quiet = {
        "warmup_operators": ("hard",),
        "warmup_row_buckets": (1,),
        "warmup_n_buckets": (16,),
        "max_queue_delay_ms": 500,
        "max_queued_requests": 1,
    }
    body = json.dumps({"x": [[1.0, 2.0]], "k": 1, "operator": "hard"}).encode()
    with (
        serving(**quiet) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as first,
    ):
        first.sendall(request(body))  # held in the queue by the batching delay
        wait_for(lambda: server.runtime.batcher.depth == 1)
        [(status, headers, answer)] = exchange(server, request(body))
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(answer)["errors"][0]["field"] == "request"
        [(status, _, _)] = read_responses(first, 1)
        assert status == 200
