"""The request headers the ingress looks at, read once from the raw header list.

Both entry gates (uvicorn's protocol and the ASGI app) hold the headers as ASGI does: a list of
``(name, value)`` byte pairs with lower-cased names, so one pass here serves both.
"""

from __future__ import annotations

from collections.abc import Iterable

TIMEOUT_HEADER = "x-request-timeout-ms"
_TIMEOUT = TIMEOUT_HEADER.encode()
_HEADER_LENGTH = b"inference-header-content-length"


class RequestHeaders:
    """Content length, type and encoding, the request timeout, the OIP framing header and the
    credentials."""

    __slots__ = (
        "length", "length_text", "media_type", "encoding", "timeout", "header_length",
        "authorization",
    )  # fmt: skip

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self.length: int | None = None  # None: absent, or not a byte count (see length_text)
        self.length_text: str | None = None
        self.media_type = ""
        self.encoding = "identity"
        self.timeout: str | None = None
        self.header_length: str | None = None
        self.authorization: bytes | None = None
        for name, value in raw:
            if name == b"content-length":
                self.length_text = value.decode("latin-1")
                self.length = int(value) if value.isdigit() else None
            elif name == b"content-type":
                self.media_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
            elif name == b"content-encoding":
                self.encoding = value.strip().lower().decode("latin-1")
            elif name == _TIMEOUT:
                self.timeout = value.decode("latin-1")
            elif name == _HEADER_LENGTH:
                self.header_length = value.decode("latin-1")
            elif name == b"authorization":
                self.authorization = value

    @property
    def json(self) -> bool:
        """Whether the body says it is JSON (``application/json`` or a ``+json`` type)."""
        media_type = self.media_type
        return media_type == "application/json" or media_type.endswith("+json")
