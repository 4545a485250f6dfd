"""The connection guard over real sockets: slow and silent clients are cut at their deadlines,
oversized headers are refused without being read, and beyond the connection cap the probes still
answer — under both gates (the protocol gate, and every request through the ASGI app)."""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from service.ingress import guard
from tests.service.ingress.test_deadlines import wait_for
from tests.service.ingress.test_protocol import read_responses
from tests.service.serving import QUICK_START, ServerThread, metric, serving, small_settings

HEADER_TIMEOUT = 1.0
BODY_IDLE = 0.5
BODY_TOTAL = 1.5
MAX_HEADERS = 4096
CAP = 6
PROBE_SLOTS = 2
SLACK = 5.0  # timers on a loaded 2-CPU machine fire late, never early
GUARD = {
    "header_timeout_s": HEADER_TIMEOUT,
    "body_idle_timeout_s": BODY_IDLE,
    "body_timeout_s": BODY_TOTAL,
    "max_header_bytes": MAX_HEADERS,
    "max_connections": CAP,
    "probe_connections": PROBE_SLOTS,
    **QUICK_START,
}
SMALL_BODY = json.dumps({"x": [[0.5, -1.0, 2.0, 3.5]], "k": 2}).encode()


@pytest.fixture(scope="module", params=["topk", "uvicorn"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with serving(http_protocol=request.param, **GUARD) as running:
        yield running


def connect(server: ServerThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def until_closed(client: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or resets) the connection, and how long."""
    started = time.monotonic()
    received = b""
    try:
        while chunk := client.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def answer(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def open_connections(server: ServerThread) -> float:
    return metric(server, "topk_open_connections")


def test_a_silent_connection_is_closed_at_the_header_deadline(server: ServerThread) -> None:
    with connect(server) as client:
        received, took = until_closed(client)
    assert received == b"", "nothing was asked, so nothing is answered"
    assert HEADER_TIMEOUT * 0.9 <= took < HEADER_TIMEOUT + SLACK


def test_a_slowloris_client_is_cut_with_408_within_its_timeout(server: ServerThread) -> None:
    client = connect(server)
    stop = threading.Event()

    def trickle() -> None:  # one header line every 0.1 s, for far longer than the deadline
        try:
            client.sendall(b"GET /v1/operators HTTP/1.1\r\nHost: test\r\n")
            for i in range(100):
                if stop.wait(0.1):
                    return
                client.sendall(b"X-Slow-%d: 1\r\n" % i)
        except OSError:
            pass

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        received, took = until_closed(client)
    finally:
        stop.set()
        sender.join()
        client.close()
    status, body = answer(received)
    assert status == 408
    assert body["errors"] == [
        {
            "field": "headers",
            "reason": f"the request line and headers took more than {HEADER_TIMEOUT:g} s",
        }
    ]
    assert HEADER_TIMEOUT * 0.9 <= took < HEADER_TIMEOUT + SLACK


def test_a_stalled_body_gets_408_at_the_idle_deadline(server: ServerThread) -> None:
    with connect(server) as client:
        client.sendall(
            b"POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + SMALL_BODY[:10]
        )
        received, took = until_closed(client)
    status, body = answer(received)
    assert status == 408
    assert body["errors"] == [
        {"field": "body", "reason": f"no byte of the body for {BODY_IDLE:g} s"}
    ]
    assert BODY_IDLE * 0.9 <= took < BODY_IDLE + SLACK


def test_a_trickled_body_is_cut_at_the_total_deadline(server: ServerThread) -> None:
    client = connect(server)
    client.sendall(
        b"POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.1 s: never idle long, never done
        try:
            while not stop.wait(0.1):
                client.sendall(b" ")
        except OSError:
            pass

    sender = threading.Thread(target=trickle, daemon=True)
    started = time.monotonic()
    sender.start()
    try:
        received, _ = until_closed(client)
    finally:
        stop.set()
        sender.join()
        client.close()
    took = time.monotonic() - started
    status, body = answer(received)
    assert status == 408
    assert body["errors"] == [
        {"field": "body", "reason": f"the body took more than {BODY_TOTAL:g} s"}
    ]
    assert BODY_TOTAL * 0.9 <= took < BODY_TOTAL + SLACK


def test_a_huge_header_gets_431_naming_it_without_the_server_reading_it(
    server: ServerThread,
) -> None:
    """The server stops reading once the cap is passed: the client can send only what the socket
    buffers hold before the connection is reset, far from the 64 MiB it tries to send."""
    client = connect(server)
    sent = 0
    total = 64 * 2**20

    def flood() -> None:
        nonlocal sent
        try:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Huge: ")
            chunk = b"a" * 65536
            while sent < total:
                client.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass

    refused = metric(server, 'topk_rejections_total{reason="headers_too_large"}')
    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    try:
        received, _ = until_closed(client)
        sender.join(timeout=30)
    finally:
        client.close()
    status, body = answer(received)
    assert status == 431
    [error] = body["errors"]
    assert error["field"] == "X-Huge"
    assert f"more than {MAX_HEADERS} bytes" in error["reason"]
    assert sent < total // 2, f"{sent} bytes were taken in"
    assert metric(server, 'topk_rejections_total{reason="headers_too_large"}') == refused + 1


def test_headers_over_the_cap_in_one_read_get_431_naming_the_largest(
    server: ServerThread,
) -> None:
    raw = (
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Small: 1\r\nX-Large: "
        + b"b" * (MAX_HEADERS + 100)
        + b"\r\n\r\n"
    )
    with connect(server) as client:
        client.sendall(raw)
        received, _ = until_closed(client)
    status, body = answer(received)
    assert status == 431
    [error] = body["errors"]
    assert error["field"] == "x-large"
    assert f"at most {MAX_HEADERS}" in error["reason"]


def test_a_request_target_over_the_cap_gets_414(server: ServerThread) -> None:
    with connect(server) as client:
        client.sendall(
            b"GET /healthz?" + b"q" * (2 * MAX_HEADERS) + b" HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        received, _ = until_closed(client)
    status, body = answer(received)
    assert status == 414
    assert body["errors"][0]["field"] == "url"


def test_headers_under_the_cap_spread_over_reads_are_served(server: ServerThread) -> None:
    with connect(server) as client:
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: test\r\n", b"X-A: 1\r\n\r\n"):
            client.sendall(part)
            time.sleep(0.05)
        [(status, _, body)] = read_responses(client, 1)
    assert (status, json.loads(body)) == (200, {"live": True})


def test_a_pipelined_request_after_a_big_body_is_not_taken_for_long_headers(
    server: ServerThread,
) -> None:
    """The cap counts the bytes of a request's own headers, not the body before it in a read."""
    body = SMALL_BODY + b" " * 40_000  # ten times the header cap, in the same read
    first = (
        b"POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    second = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-A: 1\r\n\r\n"
    with connect(server) as client:
        client.sendall(first + second[:20])
        time.sleep(0.1)
        client.sendall(second[20:])
        answers = read_responses(client, 2)
    assert [status for status, _, _ in answers] == [200, 200], answers


def test_beyond_the_connection_cap_probes_answer_other_requests_get_503(
    server: ServerThread,
) -> None:
    wait_for(lambda: open_connections(server) <= 1)  # the metric's own connection
    held: list[socket.socket] = []
    try:
        for _ in range(CAP):  # kept-alive connections fill the cap (and stay: 75 s keep-alive)
            client = connect(server)
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            [(status, _, _)] = read_responses(client, 1)
            assert status == 200
            held.append(client)
        for probe in ("/healthz", "/readyz", "/v2/health/ready"):
            with connect(server) as client:
                client.sendall(f"GET {probe} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
                received, _ = until_closed(client)  # answered, then closed: the slot is free
            assert answer(received)[0] == 200, received
        with connect(server) as client:
            client.sendall(
                b"POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(SMALL_BODY) + SMALL_BODY
            )
            received, _ = until_closed(client)
        status, body = answer(received)
        assert status == 503
        assert b"\r\nretry-after: 1\r\n" in received.lower()
        assert body["errors"][0]["field"] == "connection"
        # The probe slots taken by silent sockets, the next connection is closed at once: before
        # those are cut at their (header) deadline.
        silent = [connect(server) for _ in range(PROBE_SLOTS)]
        held += silent
        with connect(server) as client:
            received, took = until_closed(client)
        assert received == b""
        readable, _, _ = select.select(silent, [], [], 0)
        assert not readable, "the probe slots were still held when the next one was refused"
    finally:
        for client in held:
            client.close()
    wait_for(lambda: open_connections(server) <= 1)
    with connect(server) as client:  # and below the cap again, everything is served
        client.sendall(
            b"POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(SMALL_BODY) + SMALL_BODY
        )
        [(status, _, body)] = read_responses(client, 1)
    assert status == 200, body


def test_the_descriptor_limit_is_raised_to_what_the_cap_needs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"soft": 1024, "hard": 4096}

    def getrlimit(_: int) -> tuple[int, int]:
        return limits["soft"], limits["hard"]

    def setrlimit(_: int, values: tuple[int, int]) -> None:
        limits["soft"], limits["hard"] = values

    monkeypatch.setattr(guard.resource, "getrlimit", getrlimit)
    monkeypatch.setattr(guard.resource, "setrlimit", setrlimit)
    needed = 2048 + 32 + guard.OTHER_DESCRIPTORS
    assert guard.ensure_descriptors(small_settings(max_connections=2048)) == needed
    assert limits["soft"] == needed
    with caplog.at_level(logging.WARNING):
        assert guard.ensure_descriptors(small_settings(max_connections=10_000)) == 4096
    assert "set TOPK_MAX_CONNECTIONS to at most 3808" in caplog.text
