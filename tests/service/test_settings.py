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
