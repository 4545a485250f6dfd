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
    assert settings.covers[-1].n >= settings.max_n


def test_the_default_limits_cover_the_use_cases_in_the_readme() -> None:
    limits = Settings.from_env({}).limits
    assert limits.max_n >= 2**20 and limits.max_entries >= 2**20  # pruning a 2^20-entry vector
    assert limits.max_rows >= 4096 and limits.max_rows * 256 <= limits.max_entries  # routers
    assert limits.max_k == limits.max_n  # k up to n


def test_the_default_body_cap_holds_the_largest_request_the_limits_allow() -> None:
    settings = Settings.from_env({})
    rows, n = 4, settings.max_entries // 4
    # Every number as long as JSON gets for a float64, as Python's json.dumps writes it.
    row = "[" + ", ".join(["-2.2250738585072014e-308"] * n) + "]"
    matrix = "[" + ", ".join([row] * rows) + "]"
    body = (
        f'{{"x": {matrix}, "tangent": {matrix}, "cotangent": {matrix}, "k": [{n}, {n}, {n}, {n}],'
        ' "epsilon": [-2.2250738585072014e-308, 1.0, 1.0, 1.0], "operator": "sparse",'
        ' "output": "magnitude", "p": 1.3333333333333333, "solver": "threshold"}'
    )
    assert len(body) <= settings.body_limit == settings.limits.max_body_bytes
    assert settings.body_limit < 1.05 * len(body) + 2**20  # and not much more
    assert Settings.from_env({"TOPK_MAX_BODY_BYTES": "2048"}).limits.max_body_bytes == 2048


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
        {"TOPK_MAX_N": str(2**21)},
        {"TOPK_MAX_ROWS": str(2**21)},
        {"TOPK_COVER_BUCKETS": "16x1024"},  # nothing holds a row of max_n
        {"TOPK_COVER_BUCKETS": f"1x{2**20},16x1024"},  # not in increasing n
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


def test_a_largest_request_written_by_json_dumps_fits_the_body_cap() -> None:
    import json

    import numpy as np

    rows, n = 8, 64
    settings = Settings.from_env(
        {
            "TOPK_MAX_ROWS": str(rows),
            "TOPK_MAX_N": str(n),
            "TOPK_MAX_ENTRIES": str(rows * n),
            "TOPK_N_BUCKETS": "16,64",
            "TOPK_COVER_BUCKETS": "8x64",
        }
    )
    longest = -2.2250738585072014e-308
    matrix = np.full((rows, n), longest).tolist()
    body = json.dumps(
        {"x": matrix, "tangent": matrix, "cotangent": matrix, "k": [n] * rows,
         "epsilon": [longest] * rows, "operator": "sparse", "output": "mask"}
    )  # fmt: skip
    assert len(body.encode()) <= settings.max_body_bytes


def test_the_admission_budgets_follow_the_limits_unless_set() -> None:
    settings = Settings.from_env({})
    assert settings.max_queued_elements == 16 * settings.max_entries
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


def test_only_the_covers_up_to_max_n_are_built() -> None:
    assert [str(b) for b in Settings.from_env({}).covers] == ["16x1024", "1x1048576"]
    small = Settings.from_env({"TOPK_MAX_N": "1000", "TOPK_N_BUCKETS": "16,1024"})
    assert [str(b) for b in small.covers] == ["16x1024"]
