"""Optional bearer keys, under both gates: inference and metadata need a key, probes do not,
/metrics has keys of its own; a refusal is 401 with a challenge and never shows the key."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from service.ingress.auth import BearerKeys, scope_of
from service.settings import Settings
from tests.service.serving import QUICK_START, ServerThread, serving

KEYS = ("k1-Wd8Yz", "k2-Qp0Lm")
METRICS_KEY = "scrape-7Hx"
TOPK = {"x": [[0.5, -1.0, 2.0, 3.5]], "k": 2}
OIP = {
    "parameters": {"k": 2},
    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1, 2, 3.5]}],
}


@pytest.fixture(scope="module", params=["topk", "uvicorn"])
def locked(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with serving(
        http_protocol=request.param,
        api_keys=",".join(KEYS),
        metrics_api_keys=METRICS_KEY,
        **QUICK_START,
    ) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/topk", TOPK),
        ("POST", "/v1/sort", {"x": [[3.0, 1.0]]}),
        ("POST", "/v2/models/topk/infer", OIP),
        ("GET", "/v1/operators", None),
        ("GET", "/v2", None),
        ("GET", "/v2/models/topk", None),
        ("GET", "/v1/topk", None),  # a 405 is not told without a key either
    ],
)
def test_every_v1_and_v2_route_needs_a_key(
    locked: ServerThread, method: str, path: str, body: object
) -> None:
    url = locked.url + path
    missing = httpx.request(method, url, json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="topk-service"'
    assert missing.json()["errors"][0]["field"] == "authorization"
    wrong = httpx.request(method, url, json=body, headers=bearer("k1-Wd8Yy"))
    assert wrong.status_code == 401
    challenge = wrong.headers["www-authenticate"]
    assert challenge == 'Bearer realm="topk-service", error="invalid_token"'
    assert "k1-Wd8Yy" not in wrong.text
    for key in KEYS:
        allowed = httpx.request(method, url, json=body, headers=bearer(key))
        assert allowed.status_code == (405 if path == "/v1/topk" and method == "GET" else 200)


def test_an_inference_answer_with_a_key_is_the_usual_one(locked: ServerThread) -> None:
    answer = httpx.post(locked.url + "/v1/topk", json=TOPK, headers=bearer(KEYS[1]))
    assert answer.json()["rows"][0]["indices"] == [2, 3]
    lowercase = httpx.post(
        locked.url + "/v1/topk", json=TOPK, headers={"authorization": f"bearer  {KEYS[0]}"}
    )
    assert lowercase.status_code == 200, "the scheme is case-insensitive (RFC 9110)"


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/v2/models/topk/ready",
     "/docs", "/openapi.json"],
)  # fmt: skip
def test_probes_and_documents_stay_open(locked: ServerThread, path: str) -> None:
    assert httpx.get(locked.url + path).status_code == 200


def test_metrics_need_a_metrics_key_not_an_api_key(locked: ServerThread) -> None:
    url = locked.url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer(KEYS[0])).status_code == 401
    scraped = httpx.get(url, headers=bearer(METRICS_KEY))
    assert scraped.status_code == 200
    assert 'topk_rejections_total{reason="http_401"}' in scraped.text


def test_operators_say_that_keys_are_needed(locked: ServerThread) -> None:
    limits = httpx.get(locked.url + "/v1/operators", headers=bearer(KEYS[0])).json()["limits"]
    assert limits["authenticated"] is True


def test_no_key_reaches_the_logs(locked: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        httpx.post(locked.url + "/v1/topk", json=TOPK, headers=bearer(KEYS[0]))
        httpx.post(locked.url + "/v1/topk", json=TOPK, headers=bearer("guess-123"))
        httpx.post(locked.url + "/v1/topk", content=b"{", headers=bearer(KEYS[0]))
    assert caplog.records, "the server logged nothing at all: the check proves nothing"
    for secret in (*KEYS, "guess-123"):
        assert secret not in caplog.text


def test_without_keys_everything_is_open(http: httpx.Client) -> None:
    assert http.post("/v1/topk", json=TOPK).status_code == 200
    assert http.get("/metrics").status_code == 200
    assert http.get("/v1/operators").json()["limits"]["authenticated"] is False


def test_keys_come_from_a_file_too(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# mounted by the orchestrator\nfile-key-1\n\n  file-key-2  \n")
    settings = Settings.from_env({"TOPK_API_KEYS": "env-key", "TOPK_API_KEYS_FILE": str(keys)})
    checker = BearerKeys(settings.api_keys)
    for key in ("env-key", "file-key-1", "file-key-2"):
        assert checker.allows(f"Bearer {key}".encode())
    assert not checker.allows(b"Bearer # mounted by the orchestrator")
    assert not checker.allows(b"Basic ZmlsZS1rZXktMQ==")
    assert not checker.allows(None)


def test_a_bad_key_or_an_unreadable_file_fails_at_start_up_without_showing_the_key(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValidationError) as bad:
        Settings.from_env({"TOPK_API_KEYS": "good-key,bad key-ü", "TOPK_PORT": "x"})
    assert "bad key" not in str(bad.value) and "good-key" not in str(bad.value)
    with pytest.raises(ValidationError, match="api_keys_file: cannot read"):
        Settings.from_env({"TOPK_API_KEYS_FILE": str(tmp_path / "missing")})
    settings = Settings.from_env({"TOPK_API_KEYS": "s3cr3t-key"})
    assert "s3cr3t-key" not in repr(settings)
    assert settings.api_keys == (SecretStr("s3cr3t-key"),)


@pytest.mark.parametrize(
    ("path", "scope"),
    [("/v1/topk", "api"), ("/v1/operators", "api"), ("/v2", "api"), ("/v2/models/topk", "api"),
     ("/v2/models/topk/infer", "api"), ("/v2/models/topk/versions/1/infer", "api"),
     ("/v2/models/topk/ready", None), ("/v2/models/topk/versions/1/ready", None),
     ("/v2/health/live", None), ("/v2/health/ready", None), ("/healthz", None),
     ("/readyz", None), ("/metrics", "metrics"), ("/docs", None), ("/v2x", None)],
)  # fmt: skip
def test_which_paths_need_which_keys(path: str, scope: str | None) -> None:
    assert scope_of(path) == scope


def test_grpc_needs_the_same_key_but_for_health() -> None:
    """Over gRPC the key travels as the ``authorization`` metadata; the health RPCs stay open."""
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    with serving(grpc_port=0, api_keys=",".join(KEYS), **QUICK_START) as server:
        client = triton.InferenceServerClient(server.grpc_url)
        assert client.is_server_live() and client.is_server_ready()
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[0.5, -1.0, 2.0, 3.5]], np.float32))
        for call in (
            lambda headers: client.get_model_metadata("topk", headers=headers),
            lambda headers: client.infer("topk", [x], parameters={"k": 2}, headers=headers),
        ):
            with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
                call(None)
            with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
                call(bearer("wrong-key"))
        answer = client.infer("topk", [x], parameters={"k": 2}, headers=bearer(KEYS[0]))
        np.testing.assert_array_equal(answer.as_numpy("indices"), [[2, 3]])  # both at 1: by index
        client.close()
