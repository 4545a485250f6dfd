"""Settings come from TOPK_* variables, are validated once, and refuse nonsense."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_are_consistent() -> None:
    settings = Settings.from_env({})
    assert settings.port == 8000
    assert settings.batching
    assert settings.row_buckets[0] == 1
    assert settings.row_buckets[-1] >= settings.max_rows
    assert all(b == 2 * a for a, b in zip(settings.n_buckets, settings.n_buckets[1:], strict=False))
    assert settings.limits.max_n == settings.max_n


def test_environment_variables_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "TOPK_PORT": "9001",
            "TOPK_BATCHING": "false",
            "TOPK_N_BUCKETS": "8, 64,512",
            "TOPK_MAX_N": "500",
            "TOPK_MAX_QUEUE_DELAY_MS": "0.5",
            "TOPK_WARMUP_DERIVATIVES": "none,vjp",
        }
    )
    assert settings.port == 9001
    assert not settings.batching
    assert settings.n_buckets == (8, 64, 512)
    assert settings.max_queue_delay_ms == 0.5
    assert settings.warmup_derivatives == ("none", "vjp")


def test_overrides_win_over_the_environment() -> None:
    assert Settings.from_env({"TOPK_PORT": "9001"}, port=9002).port == 9002


def test_an_unknown_variable_is_refused() -> None:
    with pytest.raises(ValueError, match="TOPK_MAX_ROWZ"):
        Settings.from_env({"TOPK_MAX_ROWZ": "3"})


@pytest.mark.parametrize(
    "environ",
    [
        {"TOPK_N_BUCKETS": "64,8"},
        {"TOPK_MAX_N": "100000"},
        {"TOPK_MAX_ROWS": "100000"},
        {"TOPK_P_VALUES": "1.0"},
        {"TOPK_PORT": "http"},
        {"TOPK_WARMUP_N_BUCKETS": "17"},
        {"TOPK_WARMUP_DERIVATIVES": "hessian"},
    ],
)
def test_inconsistent_settings_fail_fast(environ: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings.from_env(environ)


def test_kubernetes_service_link_variables_are_not_settings() -> None:
    """A Service named "topk" (or "topk-grpc") in the pod's namespace must not stop the server."""
    environ = {
        "TOPK_SERVICE_HOST": "10.0.0.7",
        "TOPK_SERVICE_PORT": "8000",
        "TOPK_SERVICE_PORT_HTTP": "8000",
        "TOPK_PORT": "tcp://10.0.0.7:8000",
        "TOPK_PORT_8000_TCP": "tcp://10.0.0.7:8000",
        "TOPK_PORT_8000_TCP_PROTO": "tcp",
        "TOPK_PORT_8000_TCP_PORT": "8000",
        "TOPK_PORT_8000_TCP_ADDR": "10.0.0.7",
        "TOPK_GRPC_SERVICE_HOST": "10.0.0.8",
        "TOPK_GRPC_PORT_8001_TCP_ADDR": "10.0.0.8",
        "TOPK_MAX_ROWS": "128",
    }
    settings = Settings.from_env(environ)
    assert settings.port == 8000 and settings.max_rows == 128
    with pytest.raises(ValueError, match="TOPK_MAX_ROW"):
        Settings.from_env({"TOPK_MAX_ROW": "128"})  # a misspelt setting still fails fast


def test_the_body_cap_is_the_largest_json_body_the_size_limits_allow() -> None:
    """x, tangent and cotangent of max_rows × max_n numbers, each the longest float64 literal
    plus json.dumps's ", " (26 bytes), and 64 KiB for the rest; it follows the limits."""
    settings = Settings.from_env({})
    assert settings.max_body_bytes == 3 * 256 * 4096 * 26 + 65536 == 81_854_464
    assert len("-2.2250738585072014e-308, ") == 26
    smaller = Settings.from_env({"TOPK_MAX_ROWS": "8", "TOPK_MAX_N": "64"})
    assert smaller.max_body_bytes == 3 * 8 * 64 * 26 + 65536
    assert Settings.from_env({"TOPK_MAX_BODY_BYTES": "5000"}).max_body_bytes == 5000
    with pytest.raises(ValidationError):
        Settings.from_env({"TOPK_MAX_BODY_BYTES": "100"})


def test_a_largest_request_written_by_json_dumps_fits_the_body_cap() -> None:
    import json

    import numpy as np

    rows, n = 8, 64
    settings = Settings.from_env({"TOPK_MAX_ROWS": str(rows), "TOPK_MAX_N": str(n)})
    longest = -2.2250738585072014e-308
    matrix = np.full((rows, n), longest).tolist()
    body = json.dumps(
        {"x": matrix, "tangent": matrix, "cotangent": matrix, "k": [n] * rows,
         "epsilon": [longest] * rows, "operator": "sparse", "output": "mask"}
    )  # fmt: skip
    assert len(body.encode()) <= settings.max_body_bytes


def test_the_admission_budgets_follow_the_limits_unless_set() -> None:
    settings = Settings.from_env({})
    assert settings.max_queued_elements == 8 * settings.max_batch_rows * settings.max_n
    assert settings.max_body_bytes_in_flight == settings.max_body_bytes
    explicit = Settings.from_env(
        {"TOPK_MAX_QUEUED_ELEMENTS": "1000", "TOPK_MAX_BODY_BYTES_IN_FLIGHT": "2000"}
    )
    assert (explicit.max_queued_elements, explicit.max_body_bytes_in_flight) == (1000, 2000)


def test_the_limits_a_client_needs_are_announced() -> None:
    limits = Settings.from_env({"TOPK_MAX_HEADER_BYTES": "16384"}).limits
    assert limits.max_header_bytes == 16384
    assert limits.max_body_bytes == Settings.from_env({}).max_body_bytes
    assert (limits.keep_alive_s, limits.body_idle_timeout_s, limits.authenticated) == (
        75.0, 10.0, False,
    )  # fmt: skip


def test_every_setting_has_a_row_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TOPK_{name.upper()}`" not in readme]
    assert not missing, f"README.md does not list {missing}"
