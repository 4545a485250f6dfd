"""``python -m service`` stopped as Kubernetes stops it: SIGTERM while requests are queued.

Readiness turns false at once, the server keeps serving for TOPK_DRAIN_DELAY_S (load balancers
stop routing meanwhile), then stops accepting, answers every request it had received, and exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tests.service.ingress.test_protocol import read_responses

REPO = Path(__file__).resolve().parents[2]
DELAY = 2.0
IN_FLIGHT = 60
ENVIRONMENT = {
    "TOPK_ROW_BUCKETS": "1,2,4,8,16,32,64,128",
    "TOPK_N_BUCKETS": "16",
    "TOPK_MAX_ROWS": "8",
    "TOPK_MAX_N": "16",
    "TOPK_MAX_K": "16",
    "TOPK_MAX_BATCH_ROWS": "128",
    "TOPK_WARMUP_OPERATORS": "sparse",
    "TOPK_WARMUP_ROW_BUCKETS": "64,128",
    "TOPK_WARMUP_N_BUCKETS": "16",
    "TOPK_COMPILATION_CACHE_DIR": "",
    # Batches wait this long: the requests are still queued when the server stops accepting.
    "TOPK_MAX_QUEUE_DELAY_MS": "4000",
    "TOPK_DRAIN_DELAY_S": str(DELAY),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def wait_ready(server: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 300
    while True:
        assert server.poll() is None, "the server died during start-up"
        assert time.monotonic() < deadline, "the server never got ready"
        try:
            if get(port, "/readyz") == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)


def queued(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("topk_queued_requests "):
                return float(line.split()[1])
    return 0.0


def request(row: list[float], k: int) -> bytes:
    body = json.dumps({"x": [row], "k": k, "operator": "hard"}).encode()
    head = (
        "POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_sigterm_drains_every_request_taken_and_exits_0() -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOPK_")}
    environment.update(ENVIRONMENT, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=REPO, env=environment)
    rng = np.random.default_rng(7)
    clients: list[tuple[socket.socket, list[float], int]] = []
    try:
        wait_ready(server, port)
        for _ in range(IN_FLIGHT):  # every body fully sent before the signal
            row = rng.normal(size=int(rng.integers(2, 17))).round(3).tolist()
            k = int(rng.integers(1, len(row) + 1))
            client = socket.create_connection(("127.0.0.1", port), timeout=60)
            client.sendall(request(row, k))
            clients.append((client, row, k))
        half_row = [0.5, 2.0, -1.0, 3.0]
        half = socket.create_connection(("127.0.0.1", port), timeout=60)
        half_raw = request(half_row, 2)
        half.sendall(half_raw[:-5])  # headers and most of the body: not yet a request
        waited = time.monotonic() + 60
        while queued(port) < IN_FLIGHT:
            assert time.monotonic() < waited, "the requests were not all queued"
            time.sleep(0.05)

        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        readiness = [get(port, "/readyz")]
        assert get(port, "/healthz") == 200
        half.sendall(half_raw[-5:])  # finished during the delay: taken, like any new request
        late_row = [1.0, -2.0, 4.0]
        late = socket.create_connection(("127.0.0.1", port), timeout=60)
        late.sendall(request(late_row, 1))
        clients += [(half, half_row, 2), (late, late_row, 1)]
        while time.monotonic() < signalled + DELAY * 0.8:
            readiness.append(get(port, "/readyz"))
            time.sleep(0.1)
        assert set(readiness) == {503}, "readiness must be false for the whole delay"
        assert len(readiness) >= 5

        for client, row, k in clients:
            [(status, _, body)] = read_responses(client, 1)
            assert status == 200, body
            [answer] = json.loads(body)["rows"]
            expected = sorted(np.argsort(-np.asarray(row), kind="stable")[:k].tolist())
            assert sorted(answer["indices"]) == expected
            client.close()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            accepting = True
        except OSError:
            accepting = False
        assert not accepting, "after the delay and the drain, nothing is accepted"
        assert server.wait(timeout=60) == 0
        assert time.monotonic() - signalled >= DELAY
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for client, _, _ in clients:
            client.close()


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (the fourth field of /proc/<child>/stat is its parent)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # gone meanwhile
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited child whose parent is gone can stay a zombie here:
    this sandbox's init does not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_body_reader_process_reads_big_bodies_and_stops_with_the_server() -> None:
    """A JSON body above 64 KiB is parsed in a child process (service/ingress/reader_process.py):
    the answers are right before and after it is up, and SIGTERM still exits 0, child gone."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOPK_")}
    environment.update(
        ENVIRONMENT, JAX_PLATFORMS="cpu", TOPK_MAX_QUEUE_DELAY_MS="0", TOPK_DRAIN_DELAY_S="0.2"
    )
    command = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=REPO, env=environment)
    rng = np.random.default_rng(11)
    started: list[int] = []
    try:
        wait_ready(server, port)
        assert children(server.pid) == [], "no reader before a big body"
        after_child = 0
        deadline = time.monotonic() + 300
        while after_child < 3:  # bodies answered once the child is running
            assert time.monotonic() < deadline, "the reader process never started"
            rows = rng.normal(size=(8, 16)).round(3)
            k = int(rng.integers(1, 17))
            body = json.dumps({"x": rows.tolist(), "k": k, "operator": "hard"}) + " " * 70_000
            with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
                head = (
                    "POST /v1/topk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                client.sendall(head.encode() + body.encode())
                [(status, _, answer)] = read_responses(client, 1)
            assert status == 200, answer
            for row, got in zip(rows, json.loads(answer)["rows"], strict=True):
                expected = sorted(np.argsort(-row, kind="stable")[:k].tolist())
                assert sorted(got["indices"]) == expected
            started = children(server.pid) or started
            after_child += bool(started)
            time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not [child for child in started if running(child)], "a child outlived the server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
