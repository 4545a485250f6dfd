"""A small typed Python client of topk-service, over httpx (sync and async).

>>> with TopKClient("http://127.0.0.1:8000") as client:          # doctest: +SKIP
...     answer = client.topk([[3.0, 1.0, 2.0]], k=1)
...     answer.rows[0].indices
[0]
"""

from __future__ import annotations

from typing import Any

import httpx

from api.errors import ErrorBody
from api.models import Operator, OperatorsResponse, Output, Solver, TopKRequest, TopKResponse


class TopKError(Exception):
    """The server refused or failed a request; ``status`` is the HTTP status, ``body`` its reasons."""

    def __init__(self, status: int, body: ErrorBody, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body.error}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


def build_request(
    x: list[list[float]],
    k: int | list[int],
    *,
    operator: Operator = "sparse",
    output: Output = "mask",
    epsilon: float | list[float] | None = None,
    p: float | None = None,
    solver: Solver | None = None,
    tangent: list[list[float]] | None = None,
    cotangent: list[list[float]] | None = None,
) -> TopKRequest:
    """A checked :class:`TopKRequest` (raises pydantic's ``ValidationError`` on a type mistake)."""
    return TopKRequest(
        x=x,
        k=k,
        operator=operator,
        output=output,
        epsilon=epsilon,
        p=p,
        solver=solver,
        tangent=tangent,
        cotangent=cotangent,
    )


def _payload(request: TopKRequest) -> bytes:
    return request.model_dump_json(exclude_none=True).encode()


_JSON = {"content-type": "application/json"}


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = ErrorBody.model_validate_json(response.content)
    except ValueError:
        body = ErrorBody(error=response.text or response.reason_phrase)
    retry_after = response.headers.get("retry-after")
    raise TopKError(response.status_code, body, float(retry_after) if retry_after else None)


class TopKClient:
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, **httpx_options: Any) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, **httpx_options)

    def topk(self, x: list[list[float]], k: int | list[int], **options: Any) -> TopKResponse:
        """``POST /v1/topk``; ``options`` are the other request fields (see :func:`build_request`)."""
        return self.send(build_request(x, k, **options))

    def send(self, request: TopKRequest) -> TopKResponse:
        """``POST /v1/topk`` with a prepared request."""
        response = _checked(self._http.post("/v1/topk", content=_payload(request), headers=_JSON))
        return TopKResponse.model_validate_json(response.content)

    def operators(self) -> OperatorsResponse:
        """``GET /v1/operators``."""
        return OperatorsResponse.model_validate_json(
            _checked(self._http.get("/v1/operators")).content
        )

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 (warm and not draining)."""
        return self._http.get("/readyz").status_code == 200

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TopKClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTopKClient:
    """Asyncio client with the same methods as :class:`TopKClient`."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, **httpx_options: Any) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, **httpx_options)

    async def topk(self, x: list[list[float]], k: int | list[int], **options: Any) -> TopKResponse:
        """``POST /v1/topk``; ``options`` are the other request fields (see :func:`build_request`)."""
        return await self.send(build_request(x, k, **options))

    async def send(self, request: TopKRequest) -> TopKResponse:
        """``POST /v1/topk`` with a prepared request."""
        response = await self._http.post("/v1/topk", content=_payload(request), headers=_JSON)
        return TopKResponse.model_validate_json(_checked(response).content)

    async def operators(self) -> OperatorsResponse:
        """``GET /v1/operators``."""
        response = await self._http.get("/v1/operators")
        return OperatorsResponse.model_validate_json(_checked(response).content)

    async def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 (warm and not draining)."""
        return (await self._http.get("/readyz")).status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTopKClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
