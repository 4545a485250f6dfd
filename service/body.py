"""Reading a request body with a hard size cap (413), counting streamed bytes as they arrive.

``Content-Length`` alone is not enough: a chunked body has none, and a client can lie. Nothing
beyond the cap is ever buffered.
"""

from __future__ import annotations

from fastapi import Request

from api.errors import FieldError
from service.errors import ApiError

JSON_TYPES = ("application/json",)


def _too_large(limit: int, seen: str) -> ApiError:
    reason = f"the body is {seen} bytes; at most {limit}"
    return ApiError(413, "request body too large", [FieldError(field="body", reason=reason)])


def check_json_content_type(request: Request) -> None:
    """JSON bodies must say so (a form or text/plain POST from a browser is refused: 415)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in JSON_TYPES and not media_type.endswith("+json"):
        reason = f"expected application/json, got {content_type or 'nothing'!r}"
        raise ApiError(
            415, "unsupported media type", [FieldError(field="content-type", reason=reason)]
        )


async def read_capped_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``ApiError(413)`` as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            reason = f"not a byte count: {declared!r}"
            raise ApiError(
                400, "bad content-length", [FieldError(field="content-length", reason=reason)]
            )
        if int(declared) > limit:
            raise _too_large(limit, declared)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit, f"more than {limit}")
        chunks.append(chunk)
    return b"".join(chunks)
