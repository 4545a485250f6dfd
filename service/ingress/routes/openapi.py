"""The OpenAPI document, exactly as this server accepts requests.

FastAPI documents the inference routes from the request schemas the routes declare (the ingress
reads their bodies itself, so FastAPI never sees the models). This module makes the document
complete and exact for one server:

- the request models' nested definitions are registered as components, so that every ``$ref``
  resolves (``model_json_schema`` would otherwise leave ``#/$defs/...`` behind);
- the limits of this server's settings are written into the schemas: at most ``max_rows`` rows
  of at most ``max_n`` entries (413 beyond), k at most ``max_k``, and ``p`` one of the offered
  values (each within the tolerance the server accepts);
- the OIP routes' ``{model}`` is one of the served models (any other answers 404 naming it).

Constraints between fields (k against its row's length, ``tangent`` shaped like ``x``, a parameter
the chosen operator does not take) cannot be written in JSON Schema; they are the documented 422s.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.oip import MODELS
from service.ingress.checks import P_TOLERANCE
from service.settings import Settings

COMPONENTS = "#/components/schemas/{model}"

# Request models embedded by the routes, whose nested definitions become components.
_definitions: dict[str, dict[str, Any]] = {}


def request_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema for a route's request body, its definitions kept as components."""
    schema = model.model_json_schema(ref_template=COMPONENTS)
    _definitions.update(schema.pop("$defs", {}))
    return schema


def _rows(schema: dict[str, Any], rows: int, n: int) -> None:
    """A matrix field (``x``, ``tangent``, ``cotangent``): at most ``rows`` rows of ``n``."""
    options = schema.get("anyOf", [schema])
    for option in options:
        if option.get("type") == "array":
            option["maxItems"] = rows
            option["items"]["maxItems"] = n


def _k(schema: dict[str, Any], max_k: int) -> None:
    for option in schema.get("anyOf", [schema]):
        target = option["items"] if option.get("type") == "array" else option
        if target.get("type") == "integer":
            target["maximum"] = max_k


def _p(schema: dict[str, Any], p_values: tuple[float, ...]) -> None:
    offered = [
        {"type": "number", "minimum": p - P_TOLERANCE, "maximum": p + P_TOLERANCE} for p in p_values
    ]
    schema["anyOf"] = [*offered, {"type": "null"}]
    schema["description"] = (
        f"p of the p-norm regulariser: one of {', '.join(repr(p) for p in p_values)} (this "
        f"server's TOPK_P_VALUES; each within {P_TOLERANCE:g}). Default {p_values[0]!r}."
    )


def _apply_limits(body: dict[str, Any], settings: Settings) -> None:
    properties = body.get("properties", {})
    for name in ("x", "tangent", "cotangent"):
        if name in properties:
            _rows(properties[name], settings.max_rows, settings.max_n)
    if "k" in properties:
        _k(properties["k"], settings.max_k)
    if "p" in properties:
        _p(properties["p"], settings.p_values)


def openapi_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The app's OpenAPI document with this server's limits (cached on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in _definitions.items():
        schemas.setdefault(name, definition)
    for route, path in document["paths"].items():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "model" and "{model}" in route:
                    parameter["schema"] = {"type": "string", "enum": list(MODELS)}
        operation = path.get("post")
        content = (operation or {}).get("requestBody", {}).get("content", {})
        body = content.get("application/json", {}).get("schema")
        if body is not None and "$ref" not in body:
            _apply_limits(body, settings)
    app.openapi_schema = document
    return document
