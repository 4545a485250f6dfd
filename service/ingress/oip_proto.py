"""Open Inference Protocol over gRPC: ``ModelInferRequest`` messages in, ``ModelInferResponse``
messages out, for one model.

:class:`ModelInferEndpoint` reads what only this wire can get wrong (raw contents against the
declared datatypes and shapes, typed contents, protobuf parameter values) into the same typed
tensors and parameters the HTTP front hands over, and the model
(:class:`~service.ingress.oip_model.OipModel`) turns them into the same work unit; the answer's
output tensors go back as ``raw_output_contents`` in ``outputs`` order, which is what
``tritonclient.grpc``'s ``InferResult.as_numpy`` reads (typed output contents it does not). Raw
inputs are read with ``np.frombuffer``: no per-number work at all.

The messages are the classes tritonclient generates from Triton's ``grpc_service.proto`` (a
superset of KServe's ``grpc_predict_v2.proto``, with ``ModelConfig`` and ``RepositoryIndex``), so no
proto is vendored here. This module is imported only when gRPC is on (the ``grpc`` extra).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from api.oip import MODEL_VERSION
from service.device.assembly import Answer
from service.device.work import WorkUnit
from service.ingress.oip_model import OipModel, OipReply, Tensor, invalid

ROUTE = "/inference.GRPCInferenceService/ModelInfer"  # the gRPC method: the metrics' route label
CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
}


def parameter_values(parameters: Any, field: str) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as Python values (tritonclient sends a Python
    ``int`` as ``int64_param`` and a ``float`` as ``double_param``)."""
    values: dict[str, Any] = {}
    for name, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if kind is None:
            raise invalid(f"{field}.{name}", "a parameter without a value")
        values[name] = getattr(parameter, kind)
    return values


class ModelInferEndpoint:
    """``ModelInfer`` of one model: the ingress's message endpoint for gRPC."""

    route = ROUTE

    def __init__(self, model: OipModel) -> None:
        self.model = model
        self.operator = None if model.topk else model.model  # else the request names it

    def nbytes(self, request: Any) -> int:
        """The tensor data's size: raw contents, or typed contents as encoded."""
        raw = sum(map(len, request.raw_input_contents))
        return raw or sum(tensor.contents.ByteSize() for tensor in request.inputs)

    def decode(self, request: Any) -> tuple[WorkUnit, OipReply]:
        """The work unit and the reply plan of a ``ModelInferRequest``; ``ApiError`` naming the
        field (``inputs[0].datatype``, ``raw_input_contents[1]``, ``k``, ...)."""
        model = self.model
        if request.model_version not in ("", MODEL_VERSION):
            reason = f"{request.model_version!r}: {model.model} has version {MODEL_VERSION}"
            raise invalid("model_version", reason, status=404)
        parameters = parameter_values(request.parameters, "parameters")
        model.check_parameters(parameters)
        tensors = self._tensors(request)
        work, operator, output = model.work_unit(tensors, parameters)
        plan = OipReply(request.id or None, self._chosen(request, tensors), operator, output)
        return work, plan

    def _tensors(self, request: Any) -> dict[str, Tensor]:
        model = self.model
        inputs, raw = request.inputs, request.raw_input_contents
        if not inputs:
            raise invalid("inputs", "expected at least one input tensor")
        if raw and len(raw) != len(inputs):
            reason = f"{len(raw)} blobs for {len(inputs)} inputs: give one per input, in order"
            raise invalid("raw_input_contents", reason)
        tensors: dict[str, Tensor] = {}
        for index, tensor in enumerate(inputs):
            field = f"inputs[{index}]"
            name = model.input_name(field, tensor.name, tensors)
            shape = list(tensor.shape)
            if any(d < 0 for d in shape):
                raise invalid(f"{field}.shape", "expected non-negative dimensions")
            dtype = model.input_dtype(field, name, tensor.datatype, shape)
            if tensor.parameters:
                reason = f"unknown parameter(s) {sorted(tensor.parameters)}"
                raise invalid(f"{field}.parameters", reason)
            size = math.prod(shape)
            values: np.ndarray
            if raw:
                if tensor.HasField("contents"):
                    reason = "give raw_input_contents for every input, or contents for every one"
                    raise invalid(f"{field}.contents", reason)
                blob = raw[index]
                if len(blob) != size * dtype.itemsize:
                    reason = (
                        f"{len(blob)} bytes; {name} of shape {shape} in {tensor.datatype} takes"
                        f" {size * dtype.itemsize}"
                    )
                    raise invalid(f"raw_input_contents[{index}]", reason)
                values = np.frombuffer(blob, dtype=dtype, count=size).reshape(shape)
            else:
                kind = CONTENTS[tensor.datatype]
                typed = getattr(tensor.contents, kind)
                if len(typed) != size:
                    reason = f"{len(typed)} values for a tensor of shape {shape}"
                    raise invalid(f"{field}.contents.{kind}", reason)
                values = np.array(typed, dtype=dtype).reshape(shape)
            tensors[name] = Tensor(tuple(shape), values)
        return tensors

    def _chosen(self, request: Any, tensors: dict[str, Tensor]) -> list[tuple[str, bool]]:
        """The outputs to send (all available by default), every one as raw contents."""
        available = self.model.available(tensors)
        if not request.outputs:
            return [(name, True) for name in available]
        chosen: list[tuple[str, bool]] = []
        for index, output in enumerate(request.outputs):
            field = f"outputs[{index}]"
            if output.name not in available:
                raise invalid(f"{field}.name", f"{output.name!r} is not one of {available}")
            if any(name == output.name for name, _ in chosen):
                raise invalid(f"{field}.name", f"{output.name!r} is asked for twice")
            extra = set(output.parameters) - {"binary_data"}  # raw anyway over gRPC
            if extra:
                raise invalid(f"{field}.parameters", f"unknown parameter(s) {sorted(extra)}")
            chosen.append((output.name, True))
        return chosen

    def encode(self, _work: WorkUnit, plan: OipReply, answer: Answer) -> Any:
        """The ``ModelInferResponse``: output tensors described in ``outputs``, their bytes
        (little-endian, row-major) in ``raw_output_contents``, in the same order."""
        model = self.model
        tensors = model.output_tensors(answer)
        response = pb.ModelInferResponse(
            model_name=model.model, model_version=MODEL_VERSION, id=plan.id or ""
        )
        for name, _ in plan.outputs:
            tensor = tensors[name]
            response.outputs.add(name=name, datatype=model.outputs[name], shape=tensor.shape)
            little = tensor.astype(tensor.dtype.newbyteorder("<"), copy=False)
            response.raw_output_contents.append(little.tobytes())
        return response
