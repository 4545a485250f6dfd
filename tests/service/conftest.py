"""Fixtures of the service tests: one warm server for the session (warm-up is the slow part)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.service.serving import ServerThread, serving


@pytest.fixture(scope="session")
def server() -> Iterator[ServerThread]:
    with serving(grpc_port=0) as running:  # OIP over gRPC too, on a free port
        yield running


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
