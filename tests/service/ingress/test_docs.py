"""``/docs`` and ``/redoc`` load nothing from outside the server (they work offline), and the
OpenAPI document lists ``POST /topk`` as ``POST /v1/topk``."""

from __future__ import annotations

import re

import httpx
import pytest

ASSET = re.compile(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_reference_only_this_server(http: httpx.Client, page: str) -> None:
    response = http.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html, html
    assets = ASSET.findall(html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        fetched = http.get(asset)
        assert fetched.status_code == 200 and fetched.content, asset
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts and all(
        http.get(a)
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
        for a in scripts
    )


def test_swagger_ui_serves_its_oauth2_redirect_locally(http: httpx.Client) -> None:
    response = http.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "https://" not in response.text


def test_openapi_lists_post_topk_as_v1_topk(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    current, versioned = paths["/topk"]["post"], paths["/v1/topk"]["post"]
    assert current["requestBody"] == versioned["requestBody"]
    assert current["responses"] == versioned["responses"]
    assert current["operationId"] != versioned["operationId"]
    for route in ("/v2/models/{model}/config", "/v2/repository/index"):
        assert route in paths
