"""The OpenAPI document: valid, every reference resolves, the committed openapi.json is what a
default server serves, and the schemas carry the server's own limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from openapi_spec_validator import validate

from service import Settings, create_app
from tests.service.serving import ServerThread

ROOT = Path(__file__).resolve().parents[2]


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in references(value)]
    return []


def resolve(document: dict[str, Any], reference: str) -> Any:
    assert reference.startswith("#/"), f"only local references are expected: {reference}"
    node: Any = document
    for part in reference[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"dangling reference {reference}"
        node = node[part]
    return node


def test_the_served_document_is_valid_and_every_reference_resolves(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    validate(document)
    found = references(document)
    assert found, "the document has references to check"
    for reference in found:
        resolve(document, reference)


def test_the_committed_document_is_what_a_default_server_serves() -> None:
    """`make openapi` rewrites openapi.json; this fails when the code and the file drift."""
    served = create_app(Settings.from_env({})).openapi()
    committed = json.loads((ROOT / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(served)), "run `make openapi` and commit openapi.json"


def test_the_schemas_carry_this_servers_limits(http: httpx.Client, server: ServerThread) -> None:
    settings = server.runtime.settings
    document = http.get("/openapi.json").json()
    body = document["paths"]["/v1/topk"]["post"]["requestBody"]["content"]["application/json"]
    properties = body["schema"]["properties"]
    x = properties["x"]
    assert x["maxItems"] == settings.max_rows and x["minItems"] == 1
    assert x["items"]["maxItems"] == settings.max_n and x["items"]["minItems"] == 1
    number = x["items"]["items"]
    assert number["exclusiveMaximum"] == -number["exclusiveMinimum"] > 3.4e38
    ks = [o for o in properties["k"]["anyOf"] if o["type"] == "integer"]
    assert ks[0]["maximum"] == settings.max_k and ks[0]["minimum"] == 1
    ranges = [o for o in properties["p"]["anyOf"] if o["type"] == "number"]
    assert [(o["minimum"] + o["maximum"]) / 2 for o in ranges] == list(settings.p_values)
    sort = document["paths"]["/v1/sort"]["post"]["requestBody"]["content"]["application/json"]
    assert sort["schema"]["properties"]["x"]["maxItems"] == settings.max_rows
