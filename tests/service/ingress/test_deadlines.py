"""Requests that can no longer be useful are dropped before dispatch: a passed deadline (504) or a
client that went away. The fast paths (application/json, answered in uvicorn's protocol or by the
ASGI app) and the strict path are all checked."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.service.serving import ServerThread, metric, serving

BODY = {"x": [[1.0, 2.0, 0.5]], "k": 1, "operator": "hard"}
FAST, STRICT = "application/json", "application/vnd.topk+json"  # the strict path takes any +json
BATCHES = "topk_batch_requests_count"
DEADLINES = 'topk_rejections_total{reason="deadline"}'
GONE = 'topk_rejections_total{reason="client_disconnected"}'
QUIET = {  # one tiny kernel to warm up; a long batching delay keeps a lone request queued
    "warmup_operators": ("hard",),
    "warmup_row_buckets": (1,),
    "warmup_n_buckets": (16,),
    "max_queue_delay_ms": 1000,
}


@pytest.fixture(scope="module", params=["topk", "uvicorn"], ids=["protocol", "asgi"])
def slow_batches(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """A server whose plain requests are answered in uvicorn's protocol, or by the ASGI app."""
    with serving(http_protocol=request.param, **QUIET) as running:
        yield running


def post(server: ServerThread, content_type: str, timeout_ms: str) -> httpx.Response:
    headers = {"content-type": content_type, "x-request-timeout-ms": timeout_ms}
    return httpx.post(
        server.url + "/v1/topk", content=json.dumps(BODY), headers=headers, timeout=30
    )


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("content_type", [FAST, STRICT])
def test_a_request_queued_past_its_timeout_gets_504_and_is_never_computed(
    slow_batches: ServerThread, content_type: str
) -> None:
    server = slow_batches
    batches, deadlines = metric(server, BATCHES), metric(server, DEADLINES)
    started = time.monotonic()
    response = post(server, content_type, "50")
    assert response.status_code == 504, response.text
    assert time.monotonic() - started < 0.9  # at its deadline, before the batch would have run
    errors = response.json()["errors"]
    assert errors[0]["field"] == "request" and "timeout of 0.05 s" in errors[0]["reason"]
    assert metric(server, DEADLINES) == deadlines + 1
    wait_for(lambda: server.runtime.batcher.depth == 0)  # dropped when its batch came due
    assert metric(server, BATCHES) == batches


@pytest.mark.parametrize("content_type", [FAST, STRICT])
@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_timeout_header_gets_422_naming_it(
    slow_batches: ServerThread, content_type: str, value: str
) -> None:
    response = post(slow_batches, content_type, value)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "x-request-timeout-ms"


@pytest.mark.parametrize("content_type", [FAST, STRICT])
def test_a_timeout_longer_than_the_wait_changes_nothing(
    slow_batches: ServerThread, content_type: str
) -> None:
    response = post(slow_batches, content_type, "20000")
    assert response.status_code == 200, response.text
    assert response.json()["rows"][0]["indices"] == [1]


@pytest.mark.parametrize("content_type", [FAST, STRICT])
def test_a_client_that_disconnects_while_queued_is_never_computed(
    slow_batches: ServerThread, content_type: str
) -> None:
    server = slow_batches
    batches, gone = metric(server, BATCHES), metric(server, GONE)
    body = json.dumps(BODY).encode()
    head = (
        f"POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(head.encode() + body)
        wait_for(lambda: server.runtime.batcher.depth == 1)
    wait_for(lambda: metric(server, GONE) > gone)
    wait_for(lambda: server.runtime.batcher.depth == 0)
    assert metric(server, BATCHES) == batches
    assert metric(server, 'topk_requests_total{operator="hard",route="/v1/topk",status="499"}') >= 1


def test_the_server_default_timeout_applies_and_a_header_cannot_raise_it() -> None:
    with serving(**QUIET, request_timeout_ms=50) as server:
        for headers in ({}, {"x-request-timeout-ms": "60000"}):
            response = httpx.post(server.url + "/v1/topk", json=BODY, headers=headers, timeout=30)
            assert response.status_code == 504, response.text
        lower = httpx.post(
            server.url + "/v1/topk", json=BODY, headers={"x-request-timeout-ms": "10"}, timeout=30
        )
        assert "timeout of 0.01 s" in lower.json()["errors"][0]["reason"]
