"""Schemathesis hooks for the contract run (tests/e2e/test_schemathesis.py, `make fuzz`).

One check replaces schemathesis' ``not_a_server_error``: no 5xx ever, except the documented 504 of
a request that set its own ``X-Request-Timeout-Ms`` and was still queued when it ran out (any
positive number of milliseconds is a valid timeout, so the run does generate tiny ones).
"""

from __future__ import annotations

import schemathesis

TIMEOUT_HEADER = "x-request-timeout-ms"


@schemathesis.check
def no_server_error_but_a_deadline(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    if response.status_code < 500:
        return None
    headers = {name.lower() for name in (case.headers or {})}
    if response.status_code == 504 and TIMEOUT_HEADER in headers:
        return None
    raise AssertionError(f"server error {response.status_code}: {response.text[:500]}")
