"""The OIP HTTP codec against an independent oracle, as the ``/v1`` reader is tested.

The oracle reads a request the slow, plain way: the strict pydantic models of :mod:`api.oip` for
the JSON's structure; the model's declared inputs (:func:`api.oip.model_inputs`) for names,
datatypes and ranks, every tensor's data laid out by NumPy; then the same request written as a
``/v1/topk`` body, read by the ``/v1`` oracle (the strict models of :mod:`api.models` and
:mod:`api.validation`), for what the tensors and parameters mean; the outputs asked for last. The
oracle finds every fault of a phase (the codec stops at its first), so for every body (fixed
batteries, JSON and binary, and a thousand mutations) both accept it with the same work unit and
the same outputs, or both refuse it with the same status and the codec names a field the oracle
names (or one inside it).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from api.errors import field_path
from api.oip import InferRequest, RequestOutput, model_inputs, model_outputs, model_parameters
from service.device.operators import bind_operators
from service.device.work import WorkUnit
from service.errors import ApiError
from service.ingress.checks import Checks
from service.ingress.oip_codec import OipCodec, split_body
from service.ingress.oip_model import DTYPES, OipModel
from tests.service.ingress.test_v1_reader import Refused, assert_same, orjson_refuses
from tests.service.ingress.test_v1_reader import oracle as v1_oracle
from tests.service.serving import small_settings

MODEL = "topk"
UNION_TAGS = frozenset({"bool", "int", "float", "str", "none"})


@pytest.fixture(scope="module")
def codec() -> OipCodec:
    settings = small_settings()
    offered = bind_operators(settings.p_values)
    return OipCodec(OipModel(Checks(settings, offered), MODEL, offered))


def x(data: Any, datatype: str = "FP32", name: str = "x") -> dict[str, Any]:
    shape = list(np.shape(data))
    flat = np.ravel(np.array(data, dtype=object)).tolist()
    return {"name": name, "shape": shape, "datatype": datatype, "data": flat}


VALID: list[dict[str, Any]] = [
    {"parameters": {"k": 2}, "inputs": [x([[0.5, -1.0, 2.0, 3.5]])]},
    {"parameters": {"k": 1}, "inputs": [x([[1, 2, 3]])]},  # JSON integers are numbers
    {
        "parameters": {"k": 1, "operator": "hard", "output": "values"},
        "inputs": [{**x([[0.1, 0.2, 0.3], [4.0, 5.0, 6.0]]), "data": [[0.1, 0.2, 0.3], [4, 5, 6]]}],
    },  # nested data
    {"inputs": [x([[0.1, 0.2, 0.3], [4.0, 5.0, 6.0]]), x([1, 3], "INT32", "k")]},
    {
        "parameters": {"k": 1},
        "inputs": [x([[0.1, 0.2, 0.3], [4.0, 5.0, 6.0]], "FP64"), x([0.5, 2], "FP64", "epsilon")],
    },
    {
        "parameters": {"k": 2, "epsilon": 3, "p": 2, "solver": "pav"},
        "inputs": [x([[0.1, 0.2, 0.3]])],
    },  # fmt: skip
    {"parameters": {"k": 1, "operator": "soft", "epsilon": 0.25}, "inputs": [x([[0.1, 0.2]])]},
    {
        "id": "a",
        "parameters": {"k": 1, "binary_data_output": False},
        "inputs": [x([[3.4028234663852886e38, -3e38]], "FP64")],
    },
    {"parameters": {"k": 2}, "inputs": [x([[0.25] * 64] * 8)]},
    {
        "parameters": {"k": 1},
        "inputs": [x([[0.1, 0.2]]), x([[1.0, 0.0]], name="tangent")],
        "outputs": [{"name": "jvp"}, {"name": "indices", "parameters": {"binary_data": True}}],
    },
    {
        "parameters": {"k": 1, "binary_data_output": True},
        "inputs": [x([[0.1, 0.2]]), x([[1, 0]], "FP64", "cotangent")],
        "outputs": [{"name": "vjp", "parameters": {"binary_data": False}}, {"name": "values"}],
    },
]
INVALID: list[object] = [
    {"parameters": {"k": 1}, "inputs": [x([[0.1, True]])]},
    {"parameters": {"k": 1}, "inputs": [x([[True]])]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, "2"]])]},
    {"parameters": {"k": 1}, "inputs": [x([["1.5", "2"]])]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, None]])]},
    {"parameters": {"k": 1}, "inputs": [{**x([[0.1, 0.2]]), "data": [0.1, [0.2]]}]},
    {"parameters": {"k": 1}, "inputs": [{**x([[0.1, 0.2]]), "data": [{}, {}]}]},
    {"parameters": {"k": 1}, "inputs": [{**x([[0.1, 0.2]]), "data": [[0.1], [0.2]]}]},
    {"parameters": {"k": 1}, "inputs": [{**x([[0.1, 0.2]]), "data": [0.1]}]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 1e39]])]},
    {"parameters": {"k": 1}, "inputs": [x([[0.2, -3.4028235677973366e38]])]},
    {"parameters": {"k": 1}, "inputs": [x([[10**40, 0.2]])]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1] * 65])]},  # beyond max_n: 413
    {"parameters": {"k": 1}, "inputs": [x([[0.1]] * 9)]},  # beyond max_rows: 413
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]], "INT32")]},
    {"parameters": {"k": 1}, "inputs": [x([0.1, 0.2])]},
    {"parameters": {"k": 1}, "inputs": [{**x([[0.1, 0.2]]), "shape": [1, -2]}]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]]), x([[0.1, 0.2]])]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]], name="scores")]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]], name="tangent")]},
    {"parameters": {"k": 1}, "inputs": []},
    {"parameters": {"k": 1}},
    {"parameters": {"k": 0}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 3}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": True}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": "1"}, "inputs": [x([[0.1, 0.2]])]},
    {"inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]]), x([1], "INT32", "k")]},
    {"inputs": [x([[0.1, 0.2]]), x([0], "INT32", "k")]},
    {"inputs": [x([[0.1, 0.2]]), x([1.5], "INT32", "k")]},
    {"inputs": [x([[0.1, 0.2]]), x([2**40], "INT32", "k")]},
    {"inputs": [x([[0.1, 0.2]]), x([1, 1], "INT32", "k")]},
    {"parameters": {"k": 1, "epsilon": 0}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1, "epsilon": 1e39}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]]), x([0.0], name="epsilon")]},
    {"parameters": {"k": 1, "p": 3.0}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1, "solver": "magic"}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1, "operator": "median"}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1, "operator": "hard", "epsilon": 0.5}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1, "output": "ranks"}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1, "topk": 2}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": [1]}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1, "binary_data_output": 1}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]]), x([[1.0]], name="tangent")]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]]), x([[1.0, 1e39]], name="cotangent")]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]])], "outputs": [{"name": "jvp"}]},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]])], "outputs": []},
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]])], "outputs": [{"name": "values"}] * 2},
    {
        "parameters": {"k": 1},
        "inputs": [x([[0.1, 0.2]])],
        "outputs": [{"name": "values", "parameters": {"binary_data": "yes"}}],
    },
    {"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]])], "extra": 1},
    {"parameters": {"k": 1}, "inputs": [{**x([[0.1, 0.2]]), "extra": 1}]},
    {"parameters": {"k": 1}, "inputs": [{**x([[0.1, 0.2]]), "parameters": {"scale": 2}}]},
    {"id": 7, "parameters": {"k": 1}, "inputs": [x([[0.1, 0.2]])]},
    {"parameters": {"k": None}, "inputs": [x([[0.1, 0.2]])]},
    [1, 2],
    "text",
]
RAW_INVALID = [
    b"",
    b"{",
    b'{"parameters": {"k": 1}, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",'
    b' "data": [NaN, 1.0]}]}',
    b'{"parameters": {"k": 1}, "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",'
    b' "data": [1.0, NaN, 2.0]}]}',  # min and max can miss a NaN that is not first
    b'{"parameters": {"k": 1}, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",'
    b' "data": [1.0, Infinity]}]}',
    b"\xff",
]


def oip_fields(error: ValidationError) -> set[str]:
    """The fields of pydantic's errors, union member tags (``int``, ``list[...]``) dropped."""
    fields = set()
    for item in error.errors(include_url=False):
        location = [
            part
            for part in item["loc"]
            if isinstance(part, int) or (part not in UNION_TAGS and "[" not in part)
        ]
        fields.add(field_path(location))
    return fields


def _with_tensor_names(fields: set[str], document: Any) -> set[str]:
    """``fields``, and for a fault in an input's data (a NaN) that input's name too: the codec
    names the entry as the tensor's (``x[0][1]``), as ``/v1`` does."""
    inputs = document.get("inputs") if isinstance(document, dict) else None
    named = set(fields)
    for field in fields:
        found = re.match(r"inputs\[(\d+)\]\.data", field)
        if found and isinstance(inputs, list) and int(found.group(1)) < len(inputs):
            tensor = inputs[int(found.group(1))]
            if isinstance(tensor, dict) and isinstance(tensor.get("name"), str):
                named.add(tensor["name"])
    return named


def _declared_faults(document: Any) -> set[str]:
    """What a document that the strict models refuse also gets wrong against the model's
    declarations (parameter names; input names, datatypes, ranks, parameters): faults too."""
    if not isinstance(document, dict):
        return set()
    parameters, inputs = document.get("parameters"), document.get("inputs")
    faults = set()
    if isinstance(parameters, dict) and set(parameters) - set(model_parameters(MODEL)):
        faults.add("parameters")
    declared, seen = model_inputs(MODEL), set()
    for index, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        if not isinstance(tensor, dict):
            continue
        field, name = f"inputs[{index}]", tensor.get("name")
        if not isinstance(name, str) or name not in declared or name in seen:
            faults.add(f"{field}.name")
            continue
        seen.add(name)
        datatypes, rank = declared[name]
        if tensor.get("datatype") not in datatypes:
            faults.add(f"{field}.datatype")
        if isinstance(tensor.get("shape"), list) and len(tensor["shape"]) != rank:
            faults.add(f"{field}.shape")
        if isinstance(tensor.get("parameters"), dict) and set(tensor["parameters"]) - {
            "binary_data_size"
        }:
            faults.add(f"{field}.parameters")
    return faults


class Plan:
    """What the oracle expects besides the work unit: the outputs and how each is sent."""

    def __init__(self, outputs: list[tuple[str, bool]]) -> None:
        self.outputs = outputs


def oracle(header: bytes, binary: bytes, checks: Checks) -> tuple[WorkUnit, Plan] | Refused:
    """What the strict OIP models, the declared inputs and the ``/v1`` oracle make of a body.
    The outputs asked for are read last (after the meaning), as the codec reads them."""
    try:
        document = json.loads(header)
    except (ValueError, RecursionError):
        document = None
    outputs = document.pop("outputs", None) if isinstance(document, dict) else None
    try:
        parsed = InferRequest.model_validate_json(
            header if document is None else json.dumps(document)
        )
    except ValidationError as error:
        fields = _with_tensor_names(oip_fields(error), document)
        return Refused(422, fields | _declared_faults(document))
    declared, names = model_inputs(MODEL), model_parameters(MODEL)
    faults: set[str] = {"parameters"} if set(parsed.parameters) - set(names) else set()
    tensors: dict[str, tuple[list[int], np.ndarray]] = {}
    offset = 0
    for index, tensor in enumerate(parsed.inputs):
        field = f"inputs[{index}]"
        if tensor.name not in declared or tensor.name in tensors:
            faults.add(f"{field}.name")
            continue
        datatypes, rank = declared[tensor.name]
        if tensor.datatype not in datatypes:
            faults.add(f"{field}.datatype")
        if len(tensor.shape) != rank:
            faults.add(f"{field}.shape")
        if set(tensor.parameters) - {"binary_data_size"}:
            faults.add(f"{field}.parameters")
        if faults:
            continue
        dtype, size = DTYPES[tensor.datatype], math.prod(tensor.shape)
        size_given = tensor.parameters.get("binary_data_size")
        if size_given is not None:
            nbytes = size * dtype.itemsize
            if tensor.data is not None:
                faults.add(f"{field}.data")
            elif type(size_given) is not int or size_given != nbytes or offset + nbytes > len(binary):  # fmt: skip
                faults.add(f"{field}.parameters.binary_data_size")
            else:
                values = np.frombuffer(binary, dtype, size, offset).astype(np.float64)
                tensors[tensor.name] = (tensor.shape, values)
                offset += nbytes
            continue
        if tensor.data is None:
            faults.add(field)
            continue
        try:
            values = np.array(tensor.data, dtype=np.float64)
        except (ValueError, OverflowError):  # ragged, or an integer beyond float64
            faults.add(f"{field}.data")
            continue
        limits = np.iinfo(dtype) if dtype.kind == "i" else None
        misshaped = values.size != size or (values.ndim > 1 and list(values.shape) != tensor.shape)
        if (
            misshaped
            or limits is not None
            and not (
                np.array_equal(values, np.round(values))
                and ((values >= limits.min) & (values <= limits.max)).all()
            )
        ):
            faults.add(f"{field}.data")
        else:
            tensors[tensor.name] = (tensor.shape, values.ravel())
    if faults:
        return Refused(422, faults)
    if offset != len(binary):
        return Refused(422, {"body"})
    if "x" not in tensors:
        return Refused(422, {"inputs"})
    meaning = _meaning(parsed.parameters, tensors, checks)
    if isinstance(meaning, Refused):
        return meaning
    plan = _outputs(parsed.parameters, outputs, tensors)
    return plan if isinstance(plan, Refused) else (meaning, plan)


def _meaning(
    parameters: dict[str, Any], tensors: dict[str, tuple[list[int], np.ndarray]], checks: Checks
) -> WorkUnit | Refused:
    """The ``/v1/topk`` body of the same request, read by the ``/v1`` oracle."""
    (rows, n), values = tensors["x"]
    limits = checks.limits
    if rows > limits.max_rows or n > limits.max_n:
        return Refused(413, {"x"})
    if rows == 0 or n == 0:
        return Refused(422, {"x"})
    shapes = {name: shape for name, (shape, _) in tensors.items()}
    wrong = {
        name
        for name, shape in shapes.items()
        if shape != ([rows, n] if name in ("x", "tangent", "cotangent") else [rows])
    }
    if wrong:
        return Refused(422, wrong)
    body: dict[str, Any] = {
        name: value for name, value in parameters.items() if name != "binary_data_output"
    }
    for name in ("k", "epsilon"):
        if name in tensors and name in parameters:
            return Refused(422, {name})
    if "k" in tensors:
        body["k"] = [int(k) for k in tensors["k"][1]]
    if "epsilon" in tensors:  # read in float32, whatever its datatype (as the device has it)
        with np.errstate(over="ignore"):
            body["epsilon"] = tensors["epsilon"][1].astype(np.float32).astype(float).tolist()
    for name in ("x", "tangent", "cotangent"):
        if name in tensors:
            body[name] = tensors[name][1].reshape(rows, n).tolist()
    got = v1_oracle("topk", json.dumps(body).encode(), checks)
    if isinstance(got, Refused):  # x[0][1] and k[1] are the /v1 names of the OIP x and k
        return Refused(got.status, got.fields | {f.split("[")[0] for f in got.fields})
    return got


def _outputs(
    parameters: dict[str, Any], outputs: Any, tensors: dict[str, tuple[list[int], np.ndarray]]
) -> Plan | Refused:
    available = [
        name
        for name in model_outputs(MODEL)
        if (name != "jvp" or "tangent" in tensors) and (name != "vjp" or "cotangent" in tensors)
    ]
    all_binary = parameters.get("binary_data_output", False)
    if type(all_binary) is not bool:
        return Refused(422, {"parameters.binary_data_output"})
    if outputs is None:
        return Plan([(name, all_binary) for name in available])
    if not isinstance(outputs, list) or not outputs:
        return Refused(422, {"outputs"})
    faults: set[str] = set()
    chosen: list[tuple[str, bool]] = []
    for index, described in enumerate(outputs):
        field = f"outputs[{index}]"
        try:
            output = RequestOutput.model_validate_json(json.dumps(described))
        except ValidationError as error:
            faults |= {f"{field}.{name}" if name != "body" else field for name in oip_fields(error)}  # fmt: skip
            continue
        binary = output.parameters.get("binary_data", all_binary)
        if output.name not in available or output.name in dict(chosen):
            faults.add(f"{field}.name")
        if type(binary) is not bool or set(output.parameters) - {"binary_data"}:
            faults.add(f"{field}.parameters")
        chosen.append((output.name, binary))
    return Refused(422, faults) if faults else Plan(chosen)


def decode(codec: OipCodec, header: bytes, binary: bytes) -> tuple[WorkUnit, Any] | Refused:
    try:
        body = header + binary
        return codec.decode(*split_body(body, str(len(header)) if binary else None))
    except ApiError as error:
        refused = Refused(error.status, {e.field for e in error.body.errors})
    assert refused.fields, "a refusal names at least one field"
    return refused


def agrees(codec: OipCodec, header: bytes, binary: bytes = b"") -> bool:
    """Both accept the body with the same work unit and outputs (True), or both refuse it, the
    codec naming a field the oracle names or one inside it (False)."""
    checks = codec.model.checks
    expected = oracle(header, binary, checks)
    got = decode(codec, header, binary)
    if isinstance(expected, Refused):
        assert isinstance(got, Refused), f"the codec accepted a body the oracle refuses: {header!r}"
        assert got.status == expected.status, (header, got, expected)
        data_fault = any(".data" in field for field in expected.fields)
        if got.fields == {"body"} and orjson_refuses(header) and not data_fault:
            return False  # e.g. 1e400: no JSON for orjson, a number beyond float64 for pydantic
        assert any(
            field.startswith(named) or named.startswith(field)
            for field in got.fields
            for named in expected.fields
        ), (header, got, expected)
        return False
    assert not isinstance(got, Refused), f"the codec refused a valid body: {header!r} {got}"
    work, plan = expected
    assert_same(got[0], work, checks)
    assert list(got[1].outputs) == plan.outputs
    return True


def encoded(body: object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def as_binary(request: dict[str, Any]) -> tuple[bytes, bytes]:
    """The same request with every tensor's data sent as binary data after the header."""
    request = json.loads(json.dumps(request))
    blobs = []
    for tensor in request["inputs"]:
        dtype = DTYPES[tensor["datatype"]]
        blob = np.array(tensor.pop("data"), dtype=np.float64).astype(dtype).tobytes()
        tensor["parameters"] = {"binary_data_size": len(blob)}
        blobs.append(blob)
    return json.dumps(request).encode(), b"".join(blobs)


@pytest.mark.parametrize("request_body", VALID)
def test_a_valid_body_reads_as_the_oracle_reads_it(codec: OipCodec, request_body: object) -> None:
    header = encoded(request_body)
    assert not isinstance(oracle(header, b"", codec.model.checks), Refused), "the oracle accepts it"
    assert agrees(codec, header)
    assert agrees(codec, *as_binary(request_body))  # type: ignore[arg-type]


@pytest.mark.parametrize("request_body", INVALID + RAW_INVALID)
def test_a_bad_body_is_refused_as_the_oracle_refuses_it(
    codec: OipCodec, request_body: object
) -> None:
    assert not agrees(codec, encoded(request_body))


def test_bad_binary_framing_is_refused_as_the_oracle_refuses_it(codec: OipCodec) -> None:
    header, blob = as_binary({"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2, 0.3]])]})
    assert not agrees(codec, header, blob[:-4])  # binary_data_size beyond the body
    assert not agrees(codec, header, blob + b"\0\0\0\0")  # bytes that belong to no input
    for value in (1e39, float("nan"), float("inf")):
        bad = np.array([[0.1, value, 0.3]]).astype("<f8").tobytes()
        header64, _ = as_binary({"parameters": {"k": 1}, "inputs": [x([[0.1, 0.2, 0.3]], "FP64")]})
        assert not agrees(codec, header64, bad)
        with np.errstate(over="ignore"):  # 1e39 is infinite in float32
            bad32 = np.array([[0.1, value, 0.3]]).astype("<f4").tobytes()
        assert not agrees(codec, header, bad32)


PARAMETERS = ["k", "operator", "output", "epsilon", "p", "solver", "binary_data_output", "other"]
TENSOR_FIELDS = ["name", "shape", "datatype", "data", "parameters", "other"]
REPLACEMENTS: list[object] = [
    0, -1, 1, 2, 3, 64, 65, 0.5, 1.0, 2.0, 1.5, True, False, None, "sparse", "hard", "soft",
    "mask", "values", "pav", "x", "k", "FP32", "FP64", "INT32", "", [], [1], [1, 2], [2, 2],
    [1, 2, 3], [[1.0]], [[0.5, 2]], [0.5, 2.0, True], [0.5, "2"], {"a": 1},
    {"binary_data_size": 8}, 1e39,
]  # fmt: skip


def mutated(rng: np.random.Generator, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with one or two parameters, tensor fields or top-level fields replaced."""
    request = json.loads(json.dumps(request))
    for _ in range(rng.integers(1, 3)):
        value = REPLACEMENTS[rng.integers(len(REPLACEMENTS))]
        where = rng.integers(4)
        if where == 0:
            parameters = request.setdefault("parameters", {})
            parameters[PARAMETERS[rng.integers(len(PARAMETERS))]] = value
        elif where == 1 and isinstance(request.get("inputs"), list) and request["inputs"]:
            tensor = request["inputs"][rng.integers(len(request["inputs"]))]
            if isinstance(tensor, dict):
                tensor[TENSOR_FIELDS[rng.integers(len(TENSOR_FIELDS))]] = value
        elif where == 2:
            request[("id", "outputs", "inputs", "extra")[rng.integers(4)]] = value
        else:
            request["outputs"] = [{"name": value}]
    return request


def test_mutated_bodies_are_read_as_the_oracle_reads_them(codec: OipCodec) -> None:
    rng = np.random.default_rng(0)
    accepted = 0
    for _ in range(1000):
        request = mutated(rng, VALID[rng.integers(len(VALID))])
        accepted += agrees(codec, json.dumps(request).encode())
    assert accepted > 20  # the mutations do exercise the accepting side too (28 of 1000)
