"""Admission by cost over real sockets: a body that would pass the bodies' memory budget is
refused from its headers (503 + Retry-After, not a byte of it read), and a key's queue is bounded
by the work it holds while other keys still get in."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from service.ingress.gate import INLINE_BYTES
from tests.service.ingress.test_deadlines import wait_for
from tests.service.ingress.test_protocol import read_responses
from tests.service.serving import QUICK_START, ServerThread, metric, serving

BUDGET = 100_000
QUEUE_DELAY_MS = 1000  # batches wait this long: what is queued stays queued while a test looks
WORK_BOUND = 64  # padded entries (rows × n bucket) per key: one 1 × 64 request


def big_body(size: int) -> bytes:
    """A valid 8 × 64 request padded with JSON whitespace to ``size`` bytes (above 64 KiB)."""
    body = json.dumps({"x": [[float(i + j) for j in range(64)] for i in range(8)], "k": 3})
    return body.encode() + b" " * (size - len(body))


def head(length: int) -> bytes:
    return (
        b"POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


@pytest.fixture(scope="module", params=["topk", "uvicorn"])
def budgeted(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with serving(
        http_protocol=request.param,
        max_body_bytes_in_flight=BUDGET,
        max_queued_elements=WORK_BOUND,
        max_queue_delay_ms=QUEUE_DELAY_MS,
        **QUICK_START,
    ) as running:
        yield running


def test_a_body_past_the_budget_is_refused_from_its_headers(budgeted: ServerThread) -> None:
    server = budgeted
    first_body, second_body = big_body(90_000), big_body(80_000)
    assert len(first_body) > INLINE_BYTES and len(first_body) + len(second_body) > BUDGET
    holding = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    holding.sendall(head(len(first_body)) + first_body[:70_000])  # read in part: held
    wait_for(lambda: metric(server, "topk_body_bytes_in_flight") == len(first_body))
    refused_before = metric(server, 'topk_rejections_total{reason="body_budget"}')
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as second:
        second.sendall(head(len(second_body)))  # headers only: the answer needs no body
        [(status, headers, answer)] = read_responses(second, 1)
        assert status == 503
        assert headers["retry-after"] == "1"
        [error] = json.loads(answer)["errors"]
        assert error["field"] == "request"
        assert f"budget of {BUDGET}" in error["reason"]
        # The connection stays usable: the refused body is read and dropped, the next one served.
        second.sendall(second_body)
        holding.sendall(first_body[70_000:])
        [(status, _, answer)] = read_responses(holding, 1)
        assert status == 200, answer
        assert json.loads(answer)["rows"][0]["indices"] == [61, 62, 63]
        wait_for(lambda: metric(server, "topk_body_bytes_in_flight") == 0)
        second.sendall(head(len(second_body)) + second_body)
        [(status, _, answer)] = read_responses(second, 1)
        assert status == 200, answer
    holding.close()
    assert metric(server, 'topk_rejections_total{reason="body_budget"}') == refused_before + 1


def test_small_bodies_are_never_refused_by_the_budget(budgeted: ServerThread) -> None:
    server = budgeted
    body = big_body(90_000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as holding:
        holding.sendall(head(len(body)) + body[:1000])
        wait_for(lambda: metric(server, "topk_body_bytes_in_flight") == len(body))
        small = httpx.post(server.url + "/v1/topk", json={"x": [[1.0, 3.0, 2.0]], "k": 1})
        assert small.status_code == 200
        holding.sendall(body[1000:])
        [(status, _, _)] = read_responses(holding, 1)
        assert status == 200


def test_a_chunked_body_is_counted_as_it_arrives(budgeted: ServerThread) -> None:
    """No Content-Length: the budget is charged as the chunks come, and a body that passes it is
    refused mid-way (503), the others it would have crowded out keep theirs."""
    server = budgeted
    body = big_body(90_000)
    holding = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    holding.sendall(head(len(body)) + body[:80_000])
    wait_for(lambda: metric(server, "topk_body_bytes_in_flight") == len(body))

    def chunks() -> Iterator[bytes]:
        chunked = big_body(70_000)
        for start in range(0, len(chunked), 10_000):
            yield chunked[start : start + 10_000]

    refused = httpx.post(
        server.url + "/v1/topk", content=chunks(), headers={"content-type": "application/json"}
    )
    assert refused.status_code == 503
    assert "budget" in refused.json()["errors"][0]["reason"]
    holding.sendall(body[80_000:])
    [(status, _, _)] = read_responses(holding, 1)
    assert status == 200
    holding.close()
    wait_for(lambda: metric(server, "topk_body_bytes_in_flight") == 0)


def test_the_queue_of_a_key_is_bounded_by_work(budgeted: ServerThread) -> None:
    """With a key's work bound at 64 entries (rows × n bucket) and batches held back by a long
    queue delay, a second 1 × 64 request of the same shape is refused, one of another shape is
    not, and every accepted one is answered."""
    server = budgeted
    results: dict[str, httpx.Response] = {}

    def post(name: str, row: list[float]) -> None:
        results[name] = httpx.post(server.url + "/v1/topk", json={"x": [row], "k": 1}, timeout=30)

    first = threading.Thread(target=post, args=("first", [float(i) for i in range(64)]))
    first.start()
    wait_for(lambda: metric(server, "topk_queued_requests") == 1)
    post("same key", [float(i) for i in range(40)])  # n bucket 64 as well
    other = threading.Thread(target=post, args=("other key", [1.0, 2.0, 3.0]))  # bucket 16
    other.start()
    first.join()
    other.join()
    refused = results["same key"]
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "64 entries of work queued" in refused.json()["errors"][0]["reason"]
    assert results["first"].json()["rows"][0]["indices"] == [63]
    assert results["other key"].json()["rows"][0]["indices"] == [2]
