"""Every server-side view of the operator registry agrees with it: ``GET /v1/operators``, the
OpenAPI document, the ``/v1`` readers' fields and the OIP model metadata."""

from __future__ import annotations

from typing import Any

import httpx

from api.models import OperatorsResponse
from api.registry import OPERATORS, route_fields
from tests.service.serving import ServerThread


def test_operators_lists_the_registry_with_this_servers_choices(
    http: httpx.Client, server: ServerThread
) -> None:
    answer = OperatorsResponse.model_validate_json(http.get("/v1/operators").content)
    listed = {op.name: op for op in answer.operators}
    assert set(listed) == {o.name for o in OPERATORS}  # this core has every operator
    p_values = list(server.runtime.settings.p_values)
    for operator in OPERATORS:
        info = listed[operator.name]
        assert info.route == operator.route
        assert info.outputs == list(operator.outputs)
        parameters = {p.name: p for p in info.parameters}
        assert list(parameters) == [p.name for p in operator.parameters]
        for parameter in operator.parameters:
            shown = parameters[parameter.name]
            if parameter.name == "p":
                assert shown.allowed == p_values and shown.default == p_values[0]
                continue
            assert shown.default == (None if parameter.required else parameter.default)
            assert shown.allowed == (None if parameter.choices is None else list(parameter.choices))


def _schema(spec: dict[str, Any], route: str) -> dict[str, Any]:
    body = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema: dict[str, Any] = body
    return schema


def _enum(property_schema: dict[str, Any]) -> set[Any]:
    values: set[Any] = set(property_schema.get("enum", ()))
    for option in property_schema.get("anyOf", ()):
        values |= set(option.get("enum", ()))
    return values


def test_openapi_enums_and_fields_are_the_registrys(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    routes = {o.route for o in OPERATORS}
    for route in routes:
        operators = tuple(o for o in OPERATORS if o.route == route)
        schema = _schema(spec, route)
        assert set(schema["properties"]) == set(route_fields(operators)), route
        for operator in operators:
            for parameter in operator.parameters:
                if parameter.choices is not None:
                    shown = _enum(schema["properties"][parameter.name])
                    assert set(parameter.choices) <= shown, (route, parameter.name)
    topk = _schema(spec, "/v1/topk")["properties"]
    assert _enum(topk["operator"]) == {o.name for o in OPERATORS if o.family == "topk"}


def test_the_readers_take_the_registrys_fields(server: ServerThread) -> None:
    ingress = server.app.state.ingress
    for operator in OPERATORS:
        operators = tuple(o for o in OPERATORS if o.route == operator.route)
        reader = ingress.endpoint(operator.route).reader
        assert reader.fields == frozenset(route_fields(operators))


def test_oip_model_metadata_is_the_registrys(http: httpx.Client) -> None:
    for operator in OPERATORS:
        model = "topk" if operator.family == "topk" else operator.name
        metadata = http.get(f"/v2/models/{model}").json()
        inputs = {t["name"] for t in metadata["inputs"]}
        assert {"x", "tangent", "cotangent"} <= inputs
        assert {p.name for p in operator.parameters if p.per_row} <= inputs
