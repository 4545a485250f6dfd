"""The Open Inference Protocol (KServe V2, Triton) face of the top-k operators.

``POST /v2/models/topk/infer`` takes OIP tensors instead of ``/v1/topk``'s lists of rows, as JSON
or with the binary tensor data extension (raw little-endian tensors after the JSON header, whose
length is in the ``Inference-Header-Content-Length`` header), so Triton and KServe clients in any
language can call the service, and large inputs skip JSON number parsing altogether.

Inputs (by name; ``x`` is required, every other one optional):

- ``x``: FP32 or FP64, shape ``[rows, n]``: the scores (OIP tensors are dense: one n per request);
- ``k``: INT32 or INT64, shape ``[rows]``: one k per row (else the ``k`` parameter);
- ``epsilon``: FP32 or FP64, shape ``[rows]``: one epsilon per row (else the parameter);
- ``tangent``, ``cotangent``: FP32 or FP64, shaped like ``x``: JVP direction and VJP weights.

Request parameters: ``k`` (int), ``operator``, ``output``, ``epsilon`` (number), ``p``,
``solver`` (as in ``/v1/topk``), and the extension's ``binary_data_output`` (bool).

Outputs (all by default; ask for some with ``outputs``, each with ``binary_data`` if wanted):

- ``values``: FP32 ``[rows, n]``: the operator's output at every entry (zero off the support);
- ``indices``: INT32 ``[rows, m]``: each row's support in descending output order, as in
  ``/v1/topk``, padded with -1 to the largest support ``m`` of the request;
- ``jvp``: FP32 ``[rows, n]`` (with ``tangent``), zero off the support; ``vjp``: FP32
  ``[rows, n]`` (with ``cotangent``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from api.registry import DENSE_OPERATORS, OPERATORS, TOPK_OPERATORS, Operator

MODEL_NAME = "topk"  # the top-k family's model; each dense operator is a model of its own name
MODEL_VERSION = "1"
BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "inference-header-content-length"  # the JSON part of a binary-extension body

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr

FLOAT_TYPES = ("FP32", "FP64")
INT_TYPES = ("INT32", "INT64")
# The models, each with the registry's operators it serves (the top-k model picks one with the
# ``operator`` parameter).
MODELS: dict[str, tuple[Operator, ...]] = {
    MODEL_NAME: tuple(o for o in OPERATORS if o.name in TOPK_OPERATORS),
    **{o.name: (o,) for o in OPERATORS if o.name in DENSE_OPERATORS},
}


def model_inputs(model: str) -> dict[str, tuple[tuple[str, ...], int]]:
    """Input name -> (datatypes, rank): ``x`` and the derivatives, and the per-row parameters."""
    inputs: dict[str, tuple[tuple[str, ...], int]] = {"x": (FLOAT_TYPES, 2)}
    for operator in MODELS[model]:
        for p in operator.parameters:
            if p.per_row:
                inputs.setdefault(p.name, (INT_TYPES if p.type == "int" else FLOAT_TYPES, 1))
    return {**inputs, "tangent": (FLOAT_TYPES, 2), "cotangent": (FLOAT_TYPES, 2)}


def model_outputs(model: str) -> dict[str, str]:
    """Output name -> datatype."""
    if MODELS[model][0].family == "topk":
        return {"values": "FP32", "indices": "INT32", "jvp": "FP32", "vjp": "FP32"}
    return {"values": "FP32", "jvp": "FP32", "vjp": "FP32"}


def model_parameters(model: str) -> tuple[str, ...]:
    """Request parameters: the operator's (a per-row one also as a scalar), and the extension's."""
    names = ["operator", "output"] if MODELS[model][0].family == "topk" else []
    for operator in MODELS[model]:
        names += [p.name for p in operator.parameters if p.name not in names]
    return (*names, "binary_data_output")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


InputName = Literal["x", "k", "epsilon", "tangent", "cotangent"]  # each model takes some
Datatype = Literal["FP32", "FP64", "INT32", "INT64"]  # the OIP datatypes these models read
Number = StrictInt | StrictFloat


class RequestInput(_Strict):
    """One input tensor: ``data`` row-major (flat or nested), or ``binary_data_size`` bytes."""

    name: InputName
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(max_length=2)
    datatype: Datatype
    parameters: dict[str, Parameter] = {}
    data: list[Number] | list[list[Number]] | None = None


class RequestOutput(_Strict):
    name: StrictStr
    parameters: dict[str, Parameter] = {}


class InferRequest(_Strict):
    """``POST /v2/models/{model}/infer``."""

    id: StrictStr | None = None
    parameters: dict[str, Parameter] = {}
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Parameter] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class RepositoryModel(BaseModel):
    """One entry of ``POST /v2/repository/index``."""

    name: str
    version: str
    state: str  # READY, or UNAVAILABLE while warming, draining or failed
    reason: str
