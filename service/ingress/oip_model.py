"""One Open Inference Protocol model, whichever wire its requests come by (HTTP JSON, HTTP binary
tensors, gRPC).

A front (:mod:`service.ingress.oip_codec` for HTTP, :mod:`service.ingress.oip_proto` for gRPC)
checks what only its wire can get wrong and hands this module typed input tensors and request
parameters; :meth:`OipModel.work_unit` checks them the same way for every front (declared names,
datatypes and ranks, shapes against ``x``, the operator's parameters) and passes them to the same
:class:`~service.ingress.checks.Checks` as ``/v1``, so every protocol accepts the same requests and
queues the same work units. :meth:`OipModel.output_tensors` lays an answer's arrays out as the
model's output tensors, which each front only serialises. The metadata and the Triton model
configuration of the model are written here once too, for both fronts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

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
PLATFORM = "jax"


def invalid(field: str, reason: str, status: int = 422) -> ApiError:
    """An error whose summary names the field too (OIP clients often show only ``error``)."""
    return ApiError(status, f"{field}: {reason}", [FieldError(field=field, reason=reason)])


def summarised(error: ApiError) -> ApiError:
    """``error`` with a summary that names its fields."""
    errors = error.body.errors
    summary = "; ".join(f"{e.field}: {e.reason}" for e in errors[:3]) or error.body.error
    return ApiError(error.status, summary, errors, error.headers)


class OipReply(NamedTuple):
    """What to send back for a decoded request, and how."""

    id: str | None
    outputs: list[tuple[str, bool]]  # (name, as binary data; gRPC sends every output raw)
    operator: str
    output: str


class Tensor(NamedTuple):
    """An input tensor: its shape and its values, a flat list (JSON) or an array (binary, gRPC).
    ``finite``: the reader has already seen every value finite in float32 (so nobody scans the
    values again for it)."""

    shape: tuple[int, ...]
    values: list[Any] | np.ndarray
    finite: bool = False


def finite(flat: list[Any], shape: tuple[int, ...], field: str) -> None:
    """422 naming the first entry of ``flat`` that is not finite in float32, if any."""
    if flat and min(flat) > -FLOAT32_OVERFLOW and max(flat) < FLOAT32_OVERFLOW and not math.isnan(sum(flat)):  # fmt: skip
        return
    for index, value in enumerate(flat):
        if not -FLOAT32_OVERFLOW < value < FLOAT32_OVERFLOW:
            position = np.unravel_index(index, shape)
            where = field + "".join(f"[{int(i)}]" for i in position)
            raise invalid(where, f"{float(value)!r} is not a finite float32")


def finite_float32(values: np.ndarray, field: str) -> np.ndarray:
    """``values`` in float32, once every entry is known to stay finite there (422 otherwise).

    A float32 array (binary FP32 data, the common case) is finite in float32 exactly when
    ``isfinite`` says so, and is returned as it is: one pass, no copy."""
    if values.dtype == np.float32:
        if np.isfinite(values).all():
            return values
        bad = ~np.isfinite(values)
    else:
        bad = ~(np.abs(values.astype(np.float64, copy=False)) < FLOAT32_OVERFLOW)  # and NaN
    if bad.any():
        position = np.unravel_index(int(np.argmax(bad)), values.shape)
        where = field + "".join(f"[{int(i)}]" for i in position)
        raise invalid(where, f"{float(values[position])!r} is not a finite float32")
    with np.errstate(over="ignore"):  # |v| just above float32's largest rounds down to it
        return values.astype(np.float32)


def _matrix(tensor: Tensor, field: str) -> Matrix:
    """A float input of shape ``[rows, n]`` as rows of numbers finite in float32 (lists from
    JSON, as ``/v1`` has them; a float32 array from binary data)."""
    values = tensor.values
    if isinstance(values, np.ndarray):
        return finite_float32(values, field)
    if not tensor.finite:
        finite(values, tensor.shape, field)
    rows, n = tensor.shape
    if rows == 1:
        return [values]
    return [values[i * n : (i + 1) * n] for i in range(rows)]


class OipModel:
    """One model (``topk``, ``sort``, ...): typed tensors and parameters in, work unit out; the
    answer's arrays out as output tensors; its metadata and configuration."""

    def __init__(self, checks: Checks, model: str, offered: Mapping[str, BoundOperator]) -> None:
        self.checks = checks
        self.model = model
        self.topk = MODELS[model][0].family == "topk"
        self.operators = {op.name: offered[op.name] for op in MODELS[model] if op.name in offered}
        self.inputs = model_inputs(model)
        self.outputs = model_outputs(model)
        self._underived = [name for name in self.outputs if name not in ("jvp", "vjp")]
        self.parameters = model_parameters(model)
        self.parameter_names = frozenset(self.parameters)
        self.specs = {p.name: p for op in MODELS[model] for p in op.parameters}

    @property
    def served(self) -> bool:
        """Whether this build's core has the model's operators."""
        return bool(self.operators)

    # ------------------------------------------------------------------ requests

    def check_parameters(self, parameters: dict[str, Any]) -> None:
        """422 for request parameters this model does not take."""
        if not parameters.keys() <= self.parameter_names:
            unknown = sorted(set(parameters) - self.parameter_names)
            raise invalid("parameters", f"unknown parameter(s) {unknown}")

    def input_name(self, field: str, name: Any, seen: dict[str, Tensor]) -> str:
        """The name of a declared input tensor, once it is one of this model's, not repeated."""
        if type(name) is not str or name not in self.inputs:
            raise invalid(f"{field}.name", f"{name!r} is not one of {list(self.inputs)}")
        if name in seen:
            raise invalid(f"{field}.name", f"{name!r} is given twice")
        return name

    def input_dtype(self, field: str, name: str, datatype: Any, shape: list[int]) -> np.dtype[Any]:
        """The dtype of input ``name``, once its datatype and rank are this model's (``shape``:
        already a list of non-negative ints)."""
        datatypes, rank = self.inputs[name]
        if datatype not in datatypes:
            raise invalid(f"{field}.datatype", f"{name} takes {' or '.join(datatypes)}")
        if len(shape) != rank:
            raise invalid(f"{field}.shape", f"{name} has {rank} dimension(s)")
        return DTYPES[datatype]

    def work_unit(
        self, tensors: dict[str, Tensor], parameters: dict[str, Any]
    ) -> tuple[WorkUnit, str, str]:
        """The work unit of checked input tensors and parameters, its operator and output (422 or
        413 naming the field, summarised)."""
        if "x" not in tensors:
            raise invalid("inputs", "the input 'x' is required")
        try:
            return self._work_unit(tensors, parameters)
        except ApiError as error:
            raise summarised(error) from None

    def _work_unit(
        self, tensors: dict[str, Tensor], parameters: dict[str, Any]
    ) -> tuple[WorkUnit, str, str]:
        x = tensors["x"]
        rows, n = x.shape
        limits = self.checks.limits
        if rows > limits.max_rows or n > limits.max_n:
            reason = f"shape [{rows}, {n}]; at most [{limits.max_rows}, {limits.max_n}]"
            raise invalid("x", reason, status=413)
        if rows == 0 or n == 0:
            raise invalid("x", "needs at least one row of at least one entry")
        alone = len(tensors) == 1  # x only: the common request
        if not alone:
            for name, tensor in tensors.items():
                expected = (rows, n) if self.inputs[name][1] == 2 else (rows,)
                if tensor.shape != expected:
                    raise invalid(name, f"shape {list(tensor.shape)}; x needs {list(expected)}")
        operator, output = self._operator(parameters)
        given: dict[str, Any] = {}
        specs = self.specs
        for name, value in parameters.items():
            spec = specs.get(name)
            if spec is None:  # operator, output, binary_data_output: read elsewhere
                continue
            wrong = parameter_error(spec, value)
            if spec.per_row and wrong is None:
                wrong = _per_row_error(name, value)
            if wrong is not None:
                raise invalid(name, wrong)
            given[name] = value
        k = given.pop("k", None)
        epsilon = given.get("epsilon")
        if not alone:
            for name in ("k", "epsilon"):
                if name in tensors:
                    if name == "k" and k is not None or name == "epsilon" and epsilon is not None:
                        reason = f"give the {name} input or the {name} parameter, not both"
                        raise invalid(name, reason)
                    if name == "k":
                        k = self._per_row_input(name, tensors[name])
                    else:
                        epsilon = given["epsilon"] = self._per_row_input(name, tensors[name])
        if self.topk and k is None:
            raise invalid("k", "give the k parameter (one k) or the k input (one per row)")
        lengths = [n] * rows
        tangent = cotangent = None
        if not alone:
            if "tangent" in tensors:
                tangent = (_matrix(tensors["tangent"], "tangent"), lengths)
            if "cotangent" in tensors:
                cotangent = (_matrix(tensors["cotangent"], "cotangent"), lengths)
        work = self.checks.work_unit(
            operator, output, _matrix(x, "x"), lengths, k, epsilon, given, tangent, cotangent
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
            epsilon = finite_float32(values, name).tolist()
        else:
            finite(values, tensor.shape, name)
            epsilon = [float(np.float32(value)) for value in values]
        if min(epsilon) <= 0:
            raise invalid(name, "every epsilon must be > 0")
        return epsilon

    def available(self, tensors: dict[str, Tensor]) -> list[str]:
        """The outputs a request with these inputs has (derivatives only with their direction)."""
        if len(tensors) == 1:  # x alone: no derivative (a shared list, never changed)
            return self._underived
        return [
            name
            for name in self.outputs
            if (name != "jvp" or "tangent" in tensors) and (name != "vjp" or "cotangent" in tensors)
        ]

    # ------------------------------------------------------------------ answers

    def output_tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        """The answer's output tensors: dense ``[rows, n]`` arrays, and the top-k indices."""
        batch = answer.batch
        values = answer.dense(batch.out)
        tensors: dict[str, np.ndarray] = {"values": values}
        if batch.support is not None:
            counts = batch.support.counts[answer.start : answer.stop]
            widest = max(counts)
            indices = batch.support.order[answer.start : answer.stop, :widest].astype(np.int32)
            if min(counts) < widest:  # a shorter support is padded with -1
                for i, count in enumerate(counts):
                    indices[i, count:] = -1
            tensors["indices"] = indices
        if batch.jvp is not None:
            jvp = answer.dense(batch.jvp)
            # As in /v1, the JVP is reported on the support only (zero elsewhere).
            tensors["jvp"] = np.where(values != 0, jvp, 0) if batch.support is not None else jvp
        if batch.vjp is not None:
            tensors["vjp"] = answer.dense(batch.vjp)
        return tensors

    # ------------------------------------------------------------------ descriptions

    def metadata(self) -> dict[str, Any]:
        """The model metadata: inputs and outputs (-1: any size)."""
        return {
            "name": self.model,
            "versions": [MODEL_VERSION],
            "platform": PLATFORM,
            "inputs": [
                {"name": name, "datatype": datatypes[0], "shape": [-1] * rank}
                for name, (datatypes, rank) in self.inputs.items()
            ],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": [-1, -1]}
                for name, datatype in self.outputs.items()
            ],
        }

    def config(self) -> dict[str, Any]:
        """Triton's model configuration (``GET /v2/models/<model>/config``, gRPC ``ModelConfig``),
        which Triton's tools read before they send anything (perf_analyzer needs
        ``max_batch_size``). The first dimension of every tensor is the batch (rows, at most
        ``TOPK_MAX_ROWS``), so ``dims`` leave it out: ``x`` is ``[-1]`` (n entries per row), a
        per-row input such as ``k`` is one value per row (``dims [1]`` reshaped to ``[]``)."""
        settings = self.checks.settings

        def tensor(name: str, datatype: str, rank: int) -> dict[str, Any]:
            described: dict[str, Any] = {"name": name, "data_type": f"TYPE_{datatype}"}
            if rank == 2:
                described["dims"] = [-1]
            else:
                described["dims"] = [1]
                described["reshape"] = {"shape": []}
            return described

        return {
            "name": self.model,
            "platform": PLATFORM,
            "backend": "topk-service",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": settings.max_rows,
            "input": [
                {**tensor(name, datatypes[0], rank), "optional": name != "x"}
                for name, (datatypes, rank) in self.inputs.items()
            ],
            "output": [tensor(name, datatype, 2) for name, datatype in self.outputs.items()],
            "dynamic_batching": {
                "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000)
            },
        }


def _per_row_error(name: str, value: Any) -> str | None:
    """The scalar form of a per-row parameter: k >= 1, epsilon > 0 and finite in float32."""
    if name == "k":
        return None if value >= 1 else f"k={value}; it must be at least 1"
    if name == "epsilon" and not 0 < value < FLOAT32_OVERFLOW:
        return f"{value!r} must be > 0 and finite in float32 (below 3.4e38)"
    return None
