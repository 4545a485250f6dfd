"""Open Inference Protocol (KServe V2 / Triton) requests in, OIP tensors out.

:meth:`OipCodec.decode` reads an inference request of one model (JSON, or a JSON header followed
by raw tensors under the binary tensor data extension), checks what only OIP can get wrong (its
structure, datatypes, shapes, the binary framing) and hands typed values to the same
:class:`~service.ingress.checks.Checks` as ``/v1``, so both protocols accept the same requests and
queue the same work units. :meth:`OipCodec.encode` writes the answer's arrays straight into output
tensors. Binary inputs are read with ``np.frombuffer``: for a 256×1024 request that replaces
parsing 2.6 MB of JSON numbers with one copy.

The request's JSON is checked by hand rather than by the pydantic models of :mod:`api.oip` (which
document it): for a small request the model's parse costs as much as everything else together.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson

from api.errors import FieldError
from api.models import FLOAT32_OVERFLOW
from api.oip import MODEL_VERSION, MODELS, model_inputs, model_outputs, model_parameters
from api.registry import DEFAULT_OPERATOR, DEFAULT_OUTPUT, DENSE_OUTPUT
from service.device.assembly import Answer
from service.device.operators import BoundOperator
from service.device.work import Matrix, WorkUnit
from service.errors import ApiError
from service.ingress.checks import Checks, parameter_error

DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}  # fmt: skip
NUMBER_TYPES = frozenset({int, float})
SCALARS = (bool, int, float, str)
REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_KEYS = frozenset({"name", "parameters"})


def invalid(field: str, reason: str, status: int = 422) -> ApiError:
    """An error whose summary names the field too (OIP clients often show only ``error``)."""
    return ApiError(status, f"{field}: {reason}", [FieldError(field=field, reason=reason)])


def summarised(error: ApiError) -> ApiError:
    """``error`` with a summary that names its fields."""
    errors = error.body.errors
    summary = "; ".join(f"{e.field}: {e.reason}" for e in errors[:3]) or error.body.error
    return ApiError(error.status, summary, errors, error.headers)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data of a body (no header length: all JSON)."""
    if header_length is None:
        return body, b""
    field = "Inference-Header-Content-Length"
    try:
        length = int(header_length)
    except ValueError:
        raise invalid(field, f"{header_length!r} is not a byte count") from None
    if not 0 < length <= len(body):
        raise invalid(field, f"{length} is not within the body's {len(body)} bytes")
    return body[:length], body[length:]


@dataclass(frozen=True)
class OipReply:
    """What to send back for a decoded request, and how."""

    id: str | None
    outputs: list[tuple[str, bool]]  # (name, as binary data)
    operator: str
    output: str


def _scalars(value: Any, field: str) -> dict[str, Any]:
    """A ``parameters`` object: names to booleans, numbers or strings."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise invalid(field, "expected an object of parameters")
    for name, item in value.items():
        if type(item) not in SCALARS:
            raise invalid(f"{field}.{name}", "a parameter is a boolean, a number or a string")
    return value


def _numbers(data: Any, shape: list[int], field: str) -> list[Any]:
    """JSON tensor data, flat or nested exactly as ``shape``, as a flat list of numbers."""
    if type(data) is not list:
        raise invalid(field, "expected a list of numbers")
    flat: list[Any] = data
    if flat and type(flat[0]) is list:  # nested: NumPy checks that it nests as the shape says
        try:
            values = np.array(data, dtype=np.float64)
        except (ValueError, OverflowError, TypeError):  # ragged, not numbers, or beyond float64
            reason = "ragged nesting, a non-number, or a number beyond float64's range"
            raise invalid(field, reason) from None
        if list(values.shape) != shape:
            raise invalid(
                field, f"data of shape {list(values.shape)} for a tensor of shape {shape}"
            )
        flat = [value for row in _rows(data) for value in row]
    if not set(map(type, flat)) <= NUMBER_TYPES:  # exact types: a boolean is not a number
        raise invalid(field, "tensor data must be numbers (no strings, booleans or nulls)")
    if len(flat) != math.prod(shape):
        raise invalid(field, f"{len(flat)} numbers for a tensor of shape {shape}")
    if flat:
        try:
            float(min(flat)), float(max(flat))
        except OverflowError:  # an integer beyond float64 (Python's parser keeps it whole)
            raise invalid(field, "a number beyond float64's range") from None
    return flat


def _rows(data: list[Any]) -> list[list[Any]]:
    """The innermost lists of nested data, in order."""
    while data and type(data[0][0]) is list:
        data = [row for block in data for row in block]
    return data


def _finite(flat: list[Any], shape: tuple[int, ...], field: str) -> None:
    """422 naming the first entry of ``flat`` that is not finite in float32, if any."""
    if flat and min(flat) > -FLOAT32_OVERFLOW and max(flat) < FLOAT32_OVERFLOW and not math.isnan(sum(flat)):  # fmt: skip
        return
    for index, value in enumerate(flat):
        if not -FLOAT32_OVERFLOW < value < FLOAT32_OVERFLOW:
            position = np.unravel_index(index, shape)
            where = field + "".join(f"[{int(i)}]" for i in position)
            raise invalid(where, f"{float(value)!r} is not a finite float32")


def _finite_float32(values: np.ndarray, field: str) -> np.ndarray:
    """``values`` in float32, once every entry is known to stay finite there (422 otherwise)."""
    bad = ~(np.abs(values.astype(np.float64, copy=False)) < FLOAT32_OVERFLOW)  # and NaN
    if bad.any():
        position = np.unravel_index(int(np.argmax(bad)), values.shape)
        where = field + "".join(f"[{int(i)}]" for i in position)
        raise invalid(where, f"{float(values[position])!r} is not a finite float32")
    with np.errstate(over="ignore"):  # |v| just above float32's largest rounds down to it
        return values.astype(np.float32)


class Tensor(NamedTuple):
    """An input tensor: its shape and its values, a flat list (JSON) or an array (binary)."""

    shape: tuple[int, ...]
    values: list[Any] | np.ndarray


def _matrix(tensor: Tensor, field: str) -> Matrix:
    """A float input of shape ``[rows, n]`` as rows of numbers finite in float32 (lists from
    JSON, as ``/v1`` has them; a float32 array from binary data)."""
    values = tensor.values
    if isinstance(values, np.ndarray):
        return _finite_float32(values, field)
    _finite(values, tensor.shape, field)
    rows, n = tensor.shape
    return [values[i * n : (i + 1) * n] for i in range(rows)]


class OipCodec:
    """Decodes and encodes the inference requests of one model (``topk``, ``sort``, ...)."""

    def __init__(self, checks: Checks, model: str, offered: dict[str, BoundOperator]) -> None:
        self.checks = checks
        self.model = model
        self.topk = MODELS[model][0].family == "topk"
        self.operators = {op.name: offered[op.name] for op in MODELS[model] if op.name in offered}
        self.inputs = model_inputs(model)
        self.outputs = model_outputs(model)
        self.parameters = model_parameters(model)
        self.specs = {p.name: p for op in MODELS[model] for p in op.parameters}

    # ------------------------------------------------------------------ decode

    def decode(self, header: bytes, binary: bytes) -> tuple[WorkUnit, OipReply]:
        """The work unit and the reply plan of a request; ``ApiError`` naming the field."""
        try:
            request = orjson.loads(header)
        except orjson.JSONDecodeError as error:
            # Python's parser takes NaN, Infinity and integers beyond 64 bits: then the tensor
            # checks name the input that holds one. Either way the request is refused.
            try:
                lenient = json.loads(header)
            except (ValueError, RecursionError):
                raise invalid("body", f"Invalid JSON: {error}") from None
            self._decode(lenient, binary)
            raise invalid("body", f"Invalid JSON: {error}") from None
        return self._decode(request, binary)

    def _decode(self, request: Any, binary: bytes) -> tuple[WorkUnit, OipReply]:
        if type(request) is not dict:
            raise invalid("body", "expected a JSON object")
        for name in request:
            if name not in REQUEST_KEYS:
                raise invalid(name, "not a field of an inference request")
        request_id = request.get("id")
        if request_id is not None and type(request_id) is not str:
            raise invalid("id", "expected a string")
        parameters = _scalars(request.get("parameters"), "parameters")
        unknown = sorted(set(parameters) - set(self.parameters))
        if unknown:
            raise invalid("parameters", f"unknown parameter(s) {unknown}")
        tensors = self._tensors(request.get("inputs"), binary)
        try:
            work, operator, output = self._work_unit(tensors, parameters)
        except ApiError as error:
            raise summarised(error) from None
        plan = OipReply(request_id, self._chosen(request, tensors, parameters), operator, output)
        return work, plan

    def _tensors(self, inputs: Any, binary: bytes) -> dict[str, Tensor]:
        if type(inputs) is not list or not inputs:
            raise invalid("inputs", "expected a list of at least one input tensor")
        tensors: dict[str, Tensor] = {}
        offset = 0
        for index, tensor in enumerate(inputs):
            field = f"inputs[{index}]"
            if type(tensor) is not dict:
                raise invalid(field, "expected an input tensor object")
            for key in tensor:
                if key not in INPUT_KEYS:
                    raise invalid(f"{field}.{key}", "not a field of an input tensor")
            name = tensor.get("name")
            if type(name) is not str or name not in self.inputs:
                raise invalid(f"{field}.name", f"{name!r} is not one of {list(self.inputs)}")
            if name in tensors:
                raise invalid(f"{field}.name", f"{name!r} is given twice")
            tensors[name], offset = self._tensor(tensor, field, binary, offset)
        if offset != len(binary):
            raise invalid("body", f"{len(binary) - offset} bytes of binary data belong to no input")
        if "x" not in tensors:
            raise invalid("inputs", "the input 'x' is required")
        return tensors

    def _tensor(
        self, tensor: dict[str, Any], field: str, binary: bytes, offset: int
    ) -> tuple[Tensor, int]:
        """One input as an array of its shape, and the binary offset after it."""
        name = tensor["name"]
        datatypes, rank = self.inputs[name]
        shape = tensor.get("shape")
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
            raise invalid(f"{field}.shape", "expected a list of non-negative ints")
        datatype = tensor.get("datatype")
        if datatype not in datatypes:
            raise invalid(f"{field}.datatype", f"{name} takes {' or '.join(datatypes)}")
        if len(shape) != rank:
            raise invalid(f"{field}.shape", f"{name} has {rank} dimension(s)")
        size = math.prod(shape)
        dtype = DTYPES[datatype]
        parameters = _scalars(tensor.get("parameters"), f"{field}.parameters")
        unknown = set(parameters) - {"binary_data_size"}
        if unknown:
            raise invalid(f"{field}.parameters", f"unknown parameter(s) {sorted(unknown)}")
        binary_size = parameters.get("binary_data_size")
        data = tensor.get("data")
        values: list[Any] | np.ndarray
        if binary_size is not None:
            if data is not None:
                raise invalid(f"{field}.data", "give data or binary_data_size, not both")
            if type(binary_size) is not int or binary_size != size * dtype.itemsize:
                expected = size * dtype.itemsize
                raise invalid(f"{field}.parameters.binary_data_size", f"must be {expected} bytes")
            if offset + binary_size > len(binary):
                raise invalid(f"{field}.parameters.binary_data_size", "beyond the end of the body")
            values = np.frombuffer(binary, dtype=dtype, count=size, offset=offset).reshape(shape)
            offset += binary_size
        elif data is not None:
            values = _numbers(data, shape, f"{field}.data")
            if dtype.kind == "i":
                array = np.array(values, dtype=np.float64)
                limits = np.iinfo(dtype)
                if (
                    not np.array_equal(array, np.round(array))
                    or not ((array >= limits.min) & (array <= limits.max)).all()
                ):
                    raise invalid(f"{field}.data", f"{datatype} takes integers in its range")
                values = array.astype(np.int64).reshape(shape)
        else:
            raise invalid(field, "no data and no binary_data_size")
        return Tensor(tuple(shape), values), offset

    def _work_unit(
        self, tensors: dict[str, Tensor], parameters: dict[str, Any]
    ) -> tuple[WorkUnit, str, str]:
        rows, n = tensors["x"].shape
        limits = self.checks.limits
        if rows > limits.max_rows or n > limits.max_n:
            reason = f"shape [{rows}, {n}]; at most [{limits.max_rows}, {limits.max_n}]"
            raise invalid("x", reason, status=413)
        if rows == 0 or n == 0:
            raise invalid("x", "needs at least one row of at least one entry")
        for name, tensor in tensors.items():
            expected = (rows, n) if self.inputs[name][1] == 2 else (rows,)
            if tensor.shape != expected:
                raise invalid(name, f"shape {list(tensor.shape)}; x needs {list(expected)}")
        operator, output = self._operator(parameters)
        given: dict[str, Any] = {}
        for name, value in parameters.items():
            if name in ("operator", "output", "binary_data_output"):
                continue
            spec = self.specs.get(name)
            wrong = None if spec is None else parameter_error(spec, value)
            if spec is not None and spec.per_row and wrong is None:
                wrong = _per_row_error(name, value)
            if wrong is not None:
                raise invalid(name, wrong)
            given[name] = value
        per_row: dict[str, Any] = {}
        for name in ("k", "epsilon"):
            if name in tensors:
                if name in given:
                    raise invalid(name, f"give the {name} input or the {name} parameter, not both")
                per_row[name] = self._per_row_input(name, tensors[name])
            elif name in given:
                per_row[name] = given[name]
        k = per_row.get("k")
        if self.topk and k is None:
            raise invalid("k", "give the k parameter (one k) or the k input (one per row)")
        epsilon = per_row.get("epsilon")
        given.pop("k", None)
        if epsilon is not None:
            given["epsilon"] = epsilon
        lengths = [n] * rows
        directions = {
            name: (_matrix(tensors[name], name), lengths)
            for name in ("tangent", "cotangent")
            if name in tensors
        }
        work = self.checks.work_unit(
            operator,
            output,
            _matrix(tensors["x"], "x"),
            lengths,
            k,
            epsilon,
            given,
            directions.get("tangent"),
            directions.get("cotangent"),
        )
        return work, operator.name, output

    def _operator(self, parameters: dict[str, Any]) -> tuple[BoundOperator, str]:
        if not self.topk:
            operator = next(iter(self.operators.values()), None)
            if operator is None:
                raise invalid("model", f"{self.model!r} is not in this build", status=404)
            return operator, DENSE_OUTPUT
        name = parameters.get("operator", DEFAULT_OPERATOR)
        operator = self.operators.get(name) if type(name) is str else None
        if operator is None:
            offered = ", ".join(self.operators)
            raise invalid("operator", f"{name!r} is not an operator of this server ({offered})")
        output: Any = parameters.get("output", DEFAULT_OUTPUT)
        if type(output) is not str:
            raise invalid("output", f"expected a string, got {output!r}")
        return operator, output

    def _per_row_input(self, name: str, tensor: Tensor) -> list[Any]:
        values = tensor.values
        if name == "k":
            ks = np.asarray(values).astype(np.int64).tolist()
            if min(ks) < 1:
                raise invalid("k", "every k must be at least 1")
            return ks
        if isinstance(values, np.ndarray):
            epsilon = _finite_float32(values, name).tolist()
        else:
            _finite(values, tensor.shape, name)
            epsilon = [float(np.float32(value)) for value in values]
        if min(epsilon) <= 0:
            raise invalid(name, "every epsilon must be > 0")
        return epsilon

    def _chosen(
        self, request: dict[str, Any], tensors: dict[str, Tensor], parameters: dict[str, Any]
    ) -> list[tuple[str, bool]]:
        """The outputs to send, each as JSON data or binary data."""
        all_binary = parameters.get("binary_data_output", False)
        if type(all_binary) is not bool:
            raise invalid("parameters.binary_data_output", "must be a boolean")
        available = [
            name
            for name in self.outputs
            if (name != "jvp" or "tangent" in tensors) and (name != "vjp" or "cotangent" in tensors)
        ]
        outputs = request.get("outputs")
        if outputs is None:
            return [(name, all_binary) for name in available]
        if type(outputs) is not list or not outputs:
            raise invalid("outputs", "name at least one output, or leave outputs out for all")
        chosen: list[tuple[str, bool]] = []
        for index, output in enumerate(outputs):
            field = f"outputs[{index}]"
            if type(output) is not dict or not output.keys() <= OUTPUT_KEYS:
                raise invalid(field, "expected {name, parameters}")
            name = output.get("name")
            if name not in available:
                raise invalid(f"{field}.name", f"{name!r} is not one of {available}")
            if any(chosen_name == name for chosen_name, _ in chosen):
                raise invalid(f"{field}.name", f"{name!r} is asked for twice")
            parameters_of = _scalars(output.get("parameters"), f"{field}.parameters")
            binary = parameters_of.get("binary_data", all_binary)
            if type(binary) is not bool or set(parameters_of) - {"binary_data"}:
                raise invalid(f"{field}.parameters", "takes only binary_data (a boolean)")
            chosen.append((name, binary))
        return chosen

    # ------------------------------------------------------------------ encode

    def tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        """The answer's output tensors: dense ``[rows, n]`` arrays, and the top-k indices."""
        batch = answer.batch
        values = answer.dense(batch.out)
        tensors: dict[str, np.ndarray] = {"values": values}
        if batch.support is not None:
            counts = batch.support.counts[answer.start : answer.stop]
            order = batch.support.order[answer.start : answer.stop]
            indices = np.full((len(counts), max(counts)), -1, dtype=np.int32)
            for i, count in enumerate(counts):
                indices[i, :count] = order[i, :count]
            tensors["indices"] = indices
        if batch.jvp is not None:
            jvp = answer.dense(batch.jvp)
            # As in /v1, the JVP is reported on the support only (zero elsewhere).
            tensors["jvp"] = np.where(values != 0, jvp, 0) if batch.support is not None else jvp
        if batch.vjp is not None:
            tensors["vjp"] = answer.dense(batch.vjp)
        return tensors

    def encode(self, plan: OipReply, answer: Answer) -> tuple[bytes, dict[str, str]]:
        """The response body and its headers (binary data after the JSON when any output asks)."""
        tensors = self.tensors(answer)
        described: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for name, binary in plan.outputs:
            tensor = tensors[name]
            output: dict[str, Any] = {
                "name": name,
                "datatype": self.outputs[name],
                "shape": list(tensor.shape),
            }
            if binary:
                blob = tensor.astype(tensor.dtype.newbyteorder("<"), copy=False).tobytes()
                output["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                output["data"] = np.ascontiguousarray(tensor).ravel()
            described.append(output)
        response: dict[str, Any] = {"model_name": self.model, "model_version": MODEL_VERSION}
        if plan.id is not None:
            response["id"] = plan.id
        response["outputs"] = described
        header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
        if not blobs:
            return header, {"content-type": "application/json"}
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        }
        return b"".join([header, *blobs]), headers

    def metadata(self) -> dict[str, Any]:
        """The model metadata: inputs and outputs (-1: any size)."""
        return {
            "name": self.model,
            "versions": [MODEL_VERSION],
            "platform": "jax",
            "inputs": [
                {"name": name, "datatype": datatypes[0], "shape": [-1] * rank}
                for name, (datatypes, rank) in self.inputs.items()
            ],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": [-1, -1]}
                for name, datatype in self.outputs.items()
            ],
        }


def _per_row_error(name: str, value: Any) -> str | None:
    """The scalar form of a per-row parameter: k >= 1, epsilon > 0 and finite in float32."""
    if name == "k":
        return None if value >= 1 else f"k={value}; it must be at least 1"
    if name == "epsilon" and not 0 < value < FLOAT32_OVERFLOW:
        return f"{value!r} must be > 0 and finite in float32 (below 3.4e38)"
    return None
