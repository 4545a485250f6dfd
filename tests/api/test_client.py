"""The typed client, against a stand-in transport (the real server is in tests/e2e)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from api.client import AsyncTopKClient, TopKClient, TopKError

ANSWER = {
    "operator": "sparse",
    "output": "mask",
    "rows": [{"indices": [1], "values": [1.0], "n": 2, "k": 1}],
}


def handler(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/topk":
        body = json.loads(request.content)
        assert request.headers["content-type"] == "application/json"
        assert "epsilon" not in body  # unset options are not sent
        if body["k"] == 99:
            return httpx.Response(
                503,
                json={"error": "busy", "errors": [{"field": "request", "reason": "queue full"}]},
                headers={"retry-after": "1"},
            )
        return httpx.Response(200, json=ANSWER)
    if request.url.path == "/readyz":
        return httpx.Response(503, json={"ready": False})
    return httpx.Response(404, text="nope")


def test_the_sync_client_sends_a_checked_request_and_parses_the_answer() -> None:
    with TopKClient("http://test", transport=httpx.MockTransport(handler)) as client:
        answer = client.topk([[0.0, 1.0]], k=1)
        assert answer.rows[0].dense() == [0.0, 1.0]
        assert client.ready() is False
        with pytest.raises(TopKError) as refused:
            client.topk([[0.0, 1.0]], k=99)
        assert refused.value.status == 503
        assert refused.value.retry_after == 1.0
        assert refused.value.body.errors[0].field == "request"
        with pytest.raises(TopKError) as missing:
            client.operators()
        assert missing.value.status == 404
        assert missing.value.body.error == "nope"


def test_the_async_client_has_the_same_methods() -> None:
    async def main() -> None:
        async with AsyncTopKClient("http://test", transport=httpx.MockTransport(handler)) as client:
            answer = await client.topk([[0.0, 1.0]], k=1)
            assert answer.rows[0].indices == [1]
            assert await client.ready() is False

    asyncio.run(main())
