"""Errors that become HTTP answers, and the handlers that give every one the same body shape."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ErrorBody, FieldError, field_path

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 200: status, a one-line summary and the fields at fault."""

    def __init__(
        self,
        status: int,
        error: str,
        errors: Iterable[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.body = ErrorBody(error=error, errors=list(errors))
        self.headers = dict(headers or {})

    def __reduce__(self) -> tuple[type[ApiError], tuple[object, ...]]:
        # Refusals cross a process boundary (service/ingress/reader_process.py).
        return ApiError, (self.status, self.body.error, self.body.errors, self.headers)


def error_response(
    status: int, body: ErrorBody, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body.model_dump()),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def field_errors(error: ValidationError) -> list[FieldError]:
    """pydantic errors as field paths; union member tags (``k.int``) are dropped and merged."""
    merged: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        location = item["loc"]
        # Request models are flat: a field name, maybe a union tag, then list indices.
        parts = [location[0], *(p for p in location[1:] if isinstance(p, int))] if location else []
        reasons = merged.setdefault(field_path(parts), [])
        if item["msg"] not in reasons:
            reasons.append(item["msg"])
    return [
        FieldError(field=field, reason="; or ".join(reasons)) for field, reasons in merged.items()
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Every error of the app, expected or not, answers with an :class:`ErrorBody`."""

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.body, exc.headers)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        reason = str(exc.detail)
        field = "path" if exc.status_code in (404, 405) else "request"
        body = ErrorBody(error=reason, errors=[FieldError(field=field, reason=reason)])
        return error_response(exc.status_code, body, exc.headers)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            FieldError(field=field_path(e["loc"][1:] if e["loc"][:1] == ("body",) else e["loc"]),
                       reason=e["msg"])
            for e in exc.errors()
        ]  # fmt: skip
        return error_response(422, ErrorBody(error="invalid request", errors=errors))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, ErrorBody(error="internal server error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
