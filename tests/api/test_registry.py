"""The operator registry is the one source: the strict models, the core's defaults and the OIP
models agree with it (the server-side views are checked in tests/service/test_registry_views.py)."""

from __future__ import annotations

import inspect
from typing import Any, Literal, get_args, get_origin

import pytest

import core
from api.models import IsotonicRequest, SoftSortRequest, TopKRequest
from api.oip import MODELS, RequestInput, model_inputs, model_outputs, model_parameters
from api.registry import BY_NAME, OPERATORS, TOPK_OPERATORS, route_fields

REQUEST_MODELS: dict[str, type[Any]] = {
    "/v1/topk": TopKRequest,
    "/v1/sort": SoftSortRequest,
    "/v1/rank": SoftSortRequest,
    "/v1/isotonic": IsotonicRequest,
}


def literals(annotation: Any) -> set[Any]:
    """The values of every ``Literal`` inside ``annotation`` (through unions)."""
    if get_origin(annotation) is Literal:
        return set(get_args(annotation))
    return set().union(*(literals(option) for option in get_args(annotation)))


def route_operators(route: str) -> tuple[Any, ...]:
    return tuple(o for o in OPERATORS if o.route == route)


@pytest.mark.parametrize("operator", OPERATORS, ids=lambda o: o.name)
def test_defaults_and_parameters_are_the_cores(operator: Any) -> None:
    """Every parameter is a keyword of each of the operator's core functions, with the same
    default (the service's p default comes from its settings, which start with the core's)."""
    for function_name in operator.outputs.values():
        signature = inspect.signature(getattr(core, function_name))
        for parameter in operator.parameters:
            if parameter.name == "k":
                assert list(signature.parameters)[1] == "k", function_name
                continue
            core_parameter = signature.parameters[parameter.name]
            assert core_parameter.default == parameter.default, (function_name, parameter.name)


@pytest.mark.parametrize("route", sorted(REQUEST_MODELS))
def test_the_strict_models_take_the_registrys_fields_types_and_defaults(route: str) -> None:
    model = REQUEST_MODELS[route]
    operators = route_operators(route)
    assert set(model.model_fields) == set(route_fields(operators))
    for operator in operators:
        for parameter in operator.parameters:
            field = model.model_fields[parameter.name]
            if parameter.choices is not None:
                assert set(parameter.choices) == literals(field.annotation), (route, parameter.name)
            if parameter.type == "bool" or parameter.name == "regularization":
                assert field.default == parameter.default, (route, parameter.name)
            elif parameter.nullable:
                assert field.default is None, (route, parameter.name)
    if route == "/v1/topk":
        assert literals(model.model_fields["operator"].annotation) == set(TOPK_OPERATORS)
        outputs = {name for o in operators for name in o.outputs}
        assert literals(model.model_fields["output"].annotation) == outputs


def test_every_operator_is_an_oip_model_and_its_inputs_are_the_registrys() -> None:
    for operator in OPERATORS:
        model = "topk" if operator.family == "topk" else operator.name
        assert operator in MODELS[model]
        per_row = {p.name for p in operator.parameters if p.per_row}
        assert per_row <= set(model_inputs(model))
        assert {p.name for p in operator.parameters} <= set(model_parameters(model))
    assert "indices" in model_outputs("topk") and "indices" not in model_outputs("sort")
    names = {name for model in MODELS for name in model_inputs(model)}
    assert literals(RequestInput.model_fields["name"].annotation) == names
    datatypes = {d for model in MODELS for types, _ in model_inputs(model).values() for d in types}
    assert literals(RequestInput.model_fields["datatype"].annotation) == datatypes
    assert BY_NAME["sparse"].parameter("p") is not None
