"""Optional bearer-key authentication (off unless ``TOPK_API_KEYS`` or its file names keys).

What needs a key, and which: every ``/v1`` and ``/v2`` path — inference, ``GET /v1/operators``,
the OIP server and model metadata — needs one of ``TOPK_API_KEYS``, except the health probes
(``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/<model>/ready``), which orchestrators ask
without credentials, like ``/healthz`` and ``/readyz``. ``/metrics`` needs one of
``TOPK_METRICS_API_KEYS`` when those are set (a scraper's key is not a client's), and is open
otherwise. The API documents (``/docs``, ``/redoc``, ``/openapi.json``) stay open: they hold the
contract, no data.

A key is compared in constant time: the SHA-256 of the presented token is compared with that of
every configured key with :func:`hmac.compare_digest`, all of them each time, so neither the
length of a key nor which key matched shows in the timing. A refusal is 401 with
``WWW-Authenticate: Bearer`` (RFC 6750; ``error="invalid_token"`` when a token was sent) and never
echoes the token; nothing here logs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Literal

from pydantic import SecretStr

from api.errors import FieldError
from service.errors import ApiError

REALM = "topk-service"
_BEARER = b"bearer "
OPEN_V2_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})

Scope = Literal["api", "metrics"]


def scope_of(path: str) -> Scope | None:
    """Which keys ``path`` needs (None: it is open)."""
    if path.startswith("/v1/"):
        return "api"
    if path == "/v2" or path.startswith("/v2/"):
        if path in OPEN_V2_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready")):
            return None
        return "api"
    if path == "/metrics":
        return "metrics"
    return None


class BearerKeys:
    """A set of keys; :meth:`refusal` judges an ``Authorization`` header against them."""

    def __init__(self, keys: Iterable[SecretStr]) -> None:
        self._digests = [hashlib.sha256(key.get_secret_value().encode()).digest() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: bytes | None) -> bool:
        if authorization is None or authorization[:7].lower() != _BEARER:
            return False
        digest = hashlib.sha256(authorization[7:].strip()).digest()
        matched = False
        for known in self._digests:  # every key, every time: no early exit to time
            matched |= hmac.compare_digest(known, digest)
        return matched

    def refusal(self, authorization: bytes | None) -> ApiError | None:
        """None if ``authorization`` carries one of the keys (or there are none), else the 401."""
        if not self._digests or self.allows(authorization):
            return None
        if authorization is None:
            reason = "required: send 'Authorization: Bearer <key>'"
            challenge = f'Bearer realm="{REALM}"'
        else:
            reason = "not a valid bearer key"
            challenge = f'Bearer realm="{REALM}", error="invalid_token"'
        return ApiError(
            401,
            "unauthorized",
            [FieldError(field="authorization", reason=reason)],
            headers={"WWW-Authenticate": challenge},
        )


def authorization_of(raw: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The ``Authorization`` header of an ASGI header list (None: absent)."""
    for name, value in raw:
        if name == b"authorization":
            return value
    return None
