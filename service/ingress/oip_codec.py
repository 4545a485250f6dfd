"""Open Inference Protocol over HTTP: JSON (or a JSON header followed by raw tensors, Triton's
binary tensor data extension) in, JSON or binary tensors out.

:meth:`OipCodec.decode` checks what only this wire can get wrong (the JSON structure, shapes
written as JSON, JSON numbers, the binary framing) and hands typed tensors and parameters to the
model (:class:`~service.ingress.oip_model.OipModel`), which gRPC shares; :meth:`OipCodec.encode`
serialises the model's output tensors. Binary inputs are read with ``np.frombuffer`` from a view
of the body (no copy) and checked finite with one ``isfinite`` pass: a 256×1024 FP32 request
decodes in 0.07 ms (1.7 ms with a float64 round trip; ~60 ms as JSON numbers).

The request's JSON is checked by hand rather than by the pydantic models of :mod:`api.oip` (which
document it, and which tests/service/ingress/test_oip_codec.py holds it equal to on fixed and
mutated bodies): for a small request the model's parse costs as much as everything else together.
As in the ``/v1`` reader, a flat list of numbers is accepted by ``min``/``max`` against float32's
range (a ``true``/``false`` anywhere in the JSON asks for the exact type test), and the model does
not scan it again; the reasons for a refusal are worked out only once something is wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeGuard

import numpy as np
import orjson

from api.models import FLOAT32_OVERFLOW
from api.oip import MODEL_VERSION
from service.device.assembly import Answer
from service.device.work import WorkUnit
from service.ingress.oip_model import DTYPES, OipModel, OipReply, Tensor, invalid

NUMBER_TYPES = frozenset({int, float})
SCALARS = (bool, int, float, str)
REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_KEYS = frozenset({"name", "parameters"})
BINARY_SIZE = frozenset({"binary_data_size"})
BINARY_DATA = frozenset({"binary_data"})
Binary = bytes | memoryview


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, Binary]:
    """The JSON header and the binary tensor data of a body (no header length: all JSON); the
    data is a view of the body (a 1 MB tensor is not copied to be read)."""
    if header_length is None:
        return body, b""
    field = "Inference-Header-Content-Length"
    try:
        length = int(header_length)
    except ValueError:
        raise invalid(field, f"{header_length!r} is not a byte count") from None
    if not 0 < length <= len(body):
        raise invalid(field, f"{length} is not within the body's {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


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


def _numbers(data: Any, shape: list[int], field: str, exact: bool) -> tuple[list[Any], bool]:
    """JSON tensor data, flat or nested exactly as ``shape``, as a flat list of numbers, and
    whether every number is known to be finite in float32 (then nobody scans them again).

    A flat list of numbers is accepted by ``min``/``max`` against float32's range, which raise
    ``TypeError`` on anything but numbers and booleans; orjson yields no NaN, which ``min`` and
    ``max`` could miss. ``exact``: the JSON holds a ``true`` or ``false`` somewhere, or was read
    by Python's lenient parser (NaN): every entry is then tested by type, and its value later.
    Anything else takes the walk below, which says what is wrong."""
    if type(data) is not list:
        raise invalid(field, "expected a list of numbers")
    flat: list[Any] = data
    if not exact and flat and type(flat[0]) is not list:
        try:
            finite = min(flat) > -FLOAT32_OVERFLOW and max(flat) < FLOAT32_OVERFLOW
        except TypeError:  # a string, a null, a list or an object among the numbers
            finite = False
        if finite:
            if len(flat) != math.prod(shape):
                raise invalid(field, f"{len(flat)} numbers for a tensor of shape {shape}")
            return flat, True
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
    return flat, False


def _is_shape(shape: Any) -> TypeGuard[list[int]]:
    """Whether ``shape`` is a list of non-negative ints."""
    return type(shape) is list and all(type(d) is int and d >= 0 for d in shape)


def _rows(data: list[Any]) -> list[list[Any]]:
    """The innermost lists of nested data, in order."""
    while data and type(data[0][0]) is list:
        data = [row for block in data for row in block]
    return data


class OipCodec:
    """Decodes and encodes the HTTP inference requests of one model (``topk``, ``sort``, ...)."""

    def __init__(self, model: OipModel) -> None:
        self.model = model

    # ------------------------------------------------------------------ decode

    def decode(self, header: bytes, binary: Binary) -> tuple[WorkUnit, OipReply]:
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
            self._decode(lenient, binary, exact=True)
            raise invalid("body", f"Invalid JSON: {error}") from None
        # A boolean can hide in tensor data only as a literal true or false.
        exact = b"true" in header or b"false" in header
        return self._decode(request, binary, exact)

    def _decode(self, request: Any, binary: Binary, exact: bool) -> tuple[WorkUnit, OipReply]:
        if type(request) is not dict:
            raise invalid("body", "expected a JSON object")
        if not request.keys() <= REQUEST_KEYS:
            for name in request:
                if name not in REQUEST_KEYS:
                    raise invalid(name, "not a field of an inference request")
        request_id = request.get("id")
        if request_id is not None and type(request_id) is not str:
            raise invalid("id", "expected a string")
        parameters = _scalars(request.get("parameters"), "parameters")
        model = self.model
        model.check_parameters(parameters)
        tensors = self._tensors(request.get("inputs"), binary, exact)
        work, operator, output = model.work_unit(tensors, parameters)
        plan = OipReply(request_id, self._chosen(request, tensors, parameters), operator, output)
        return work, plan

    def _tensors(self, inputs: Any, binary: Binary, exact: bool) -> dict[str, Tensor]:
        if type(inputs) is not list or not inputs:
            raise invalid("inputs", "expected a list of at least one input tensor")
        tensors: dict[str, Tensor] = {}
        offset = 0
        for index, tensor in enumerate(inputs):
            field = f"inputs[{index}]"
            if type(tensor) is not dict:
                raise invalid(field, "expected an input tensor object")
            if not tensor.keys() <= INPUT_KEYS:
                for key in tensor:
                    if key not in INPUT_KEYS:
                        raise invalid(f"{field}.{key}", "not a field of an input tensor")
            name = self.model.input_name(field, tensor.get("name"), tensors)
            tensors[name], offset = self._tensor(tensor, name, field, binary, offset, exact)
        if offset != len(binary):
            raise invalid("body", f"{len(binary) - offset} bytes of binary data belong to no input")
        return tensors

    def _tensor(
        self,
        tensor: dict[str, Any],
        name: str,
        field: str,
        binary: Binary,
        offset: int,
        exact: bool,
    ) -> tuple[Tensor, int]:
        """One input as an array of its shape (or flat numbers), and the binary offset after it."""
        shape = tensor.get("shape")
        if not _is_shape(shape):
            raise invalid(f"{field}.shape", "expected a list of non-negative ints")
        datatype = tensor.get("datatype")
        dtype = self.model.input_dtype(field, name, datatype, shape)
        size = math.prod(shape)
        parameters = _scalars(tensor.get("parameters"), f"{field}.parameters")
        if parameters and not parameters.keys() <= BINARY_SIZE:
            unknown = sorted(set(parameters) - BINARY_SIZE)
            raise invalid(f"{field}.parameters", f"unknown parameter(s) {unknown}")
        binary_size = parameters.get("binary_data_size")
        data = tensor.get("data")
        values: list[Any] | np.ndarray
        finite = False
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
            values, finite = _numbers(data, shape, f"{field}.data", exact)
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
        return Tensor(tuple(shape), values, finite), offset

    def _chosen(
        self, request: dict[str, Any], tensors: dict[str, Tensor], parameters: dict[str, Any]
    ) -> list[tuple[str, bool]]:
        """The outputs to send, each as JSON data or binary data."""
        all_binary = parameters.get("binary_data_output", False)
        if type(all_binary) is not bool:
            raise invalid("parameters.binary_data_output", "must be a boolean")
        available = self.model.available(tensors)
        outputs = request.get("outputs")
        if outputs is None:
            return [(name, all_binary) for name in available]
        if type(outputs) is not list or not outputs:
            raise invalid("outputs", "name at least one output, or leave outputs out for all")
        chosen: dict[str, bool] = {}
        for index, output in enumerate(outputs):
            if type(output) is not dict or not output.keys() <= OUTPUT_KEYS:
                raise invalid(f"outputs[{index}]", "expected {name, parameters}")
            name = output.get("name")
            if name not in available:
                raise invalid(f"outputs[{index}].name", f"{name!r} is not one of {available}")
            if name in chosen:
                raise invalid(f"outputs[{index}].name", f"{name!r} is asked for twice")
            parameters_of = output.get("parameters")
            binary = all_binary
            if parameters_of is not None:
                parameters_of = _scalars(parameters_of, f"outputs[{index}].parameters")
                binary = parameters_of.get("binary_data", all_binary)
                if type(binary) is not bool or not parameters_of.keys() <= BINARY_DATA:
                    reason = "takes only binary_data (a boolean)"
                    raise invalid(f"outputs[{index}].parameters", reason)
            chosen[name] = binary
        return list(chosen.items())

    # ------------------------------------------------------------------ encode

    def encode(self, plan: OipReply, answer: Answer) -> tuple[bytes, dict[str, str]]:
        """The response body and its headers (binary data after the JSON when any output asks)."""
        model = self.model
        tensors = model.output_tensors(answer)
        described: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for name, binary in plan.outputs:
            tensor = tensors[name]
            datatype = model.outputs[name]
            output: dict[str, Any] = {
                "name": name,
                "datatype": datatype,
                "shape": list(tensor.shape),
            }
            if binary:  # little-endian, in the declared datatype
                blob = tensor.astype(DTYPES[datatype], copy=False).tobytes()
                output["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                output["data"] = np.ascontiguousarray(tensor).ravel()
            described.append(output)
        response: dict[str, Any] = {"model_name": model.model, "model_version": MODEL_VERSION}
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
