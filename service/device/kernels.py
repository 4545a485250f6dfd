"""One ahead-of-time compiled executable per (operator, output, derivative, static knobs, bucket).

Every kernel takes float32 ``x`` of the bucket's shape and per-row data ``k`` (int32), ``epsilon``
(float32) and ``lengths`` (int32), so that any k, epsilon or row length within a bucket reuses the
same executable. Derivative kernels also take the ``tangent`` (JVP) and/or the ``cotangent`` (VJP)
and differentiate with respect to ``x`` only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from service.device.buckets import ShapeBucket
from service.device.operators import BoundOperator
from service.device.work import Derivative, Static


@dataclass(frozen=True)
class KernelKey:
    """Everything that selects one executable; ``static`` holds e.g. ``(("p", 1.5), ("solver", "pav"))``."""

    operator: str
    output: str
    derivative: Derivative
    static: Static
    bucket: ShapeBucket

    @property
    def takes_tangent(self) -> bool:
        return self.derivative in ("jvp", "both")

    @property
    def takes_cotangent(self) -> bool:
        return self.derivative in ("vjp", "both")


@dataclass(frozen=True)
class KernelInputs:
    """The padded host arrays of one device call, in the bucket's shape."""

    x: np.ndarray  # (rows, n) float32
    k: np.ndarray  # (rows,) int32
    epsilon: np.ndarray  # (rows,) float32
    lengths: np.ndarray  # (rows,) int32
    tangent: np.ndarray | None = None  # (rows, n) float32
    cotangent: np.ndarray | None = None  # (rows, n) float32

    def arguments(self, key: KernelKey) -> tuple[np.ndarray, ...]:
        """Positional arguments of the kernel selected by ``key``."""
        extra: list[np.ndarray] = []
        if key.takes_tangent:
            assert self.tangent is not None, "a jvp kernel needs a tangent"
            extra.append(self.tangent)
        if key.takes_cotangent:
            assert self.cotangent is not None, "a vjp kernel needs a cotangent"
            extra.append(self.cotangent)
        return (self.x, *extra, self.k, self.epsilon, self.lengths)


def _operator_call(operator: BoundOperator, key: KernelKey) -> Callable[..., jax.Array]:
    function = operator.functions[key.output]
    spec = operator.spec

    def call(x: jax.Array, k: jax.Array, epsilon: jax.Array, lengths: jax.Array) -> jax.Array:
        keywords: dict[str, Any] = {"lengths": lengths, **dict(key.static)}
        if spec.takes_epsilon:
            keywords["epsilon"] = epsilon
        out = function(x, k, **keywords) if spec.takes_k else function(x, **keywords)
        # The tests run with x64 on; never let a float64 constant of the core widen the output.
        return jnp.asarray(out, dtype=jnp.float32)

    return call


def kernel_function(operator: BoundOperator, key: KernelKey) -> Callable[..., Any]:
    """The traceable function behind ``key``: returns ``(out,)`` plus ``jvp`` and/or ``vjp``."""
    call = _operator_call(operator, key)

    def kernel(x: jax.Array, *rest: jax.Array) -> tuple[jax.Array, ...]:
        *directions, k, epsilon, lengths = rest

        def of_x(x_: jax.Array) -> jax.Array:
            return call(x_, k, epsilon, lengths)

        if not key.takes_cotangent:
            if not key.takes_tangent:
                return (of_x(x),)
            return jax.jvp(of_x, (x,), (directions[0],))
        out, pullback = jax.vjp(of_x, x)
        (vjp,) = pullback(directions[-1])
        if not key.takes_tangent:
            return out, vjp
        _, jvp = jax.jvp(of_x, (x,), (directions[0],))  # XLA shares the primal with the vjp's
        return out, jvp, vjp

    return kernel


def argument_shapes(key: KernelKey) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Abstract arguments of the kernel for ``lower``: explicit dtypes, never the defaults."""
    rows, n = key.bucket.rows, key.bucket.n
    matrix = jax.ShapeDtypeStruct((rows, n), np.float32)
    directions = [matrix] * (int(key.takes_tangent) + int(key.takes_cotangent))
    return (
        matrix,
        *directions,
        jax.ShapeDtypeStruct((rows,), np.int32),
        jax.ShapeDtypeStruct((rows,), np.float32),
        jax.ShapeDtypeStruct((rows,), np.int32),
    )


class CompiledKernels:
    """The executables compiled so far, compiled ahead of time on first :meth:`get`.

    Only ``jax.stages.Compiled`` objects are called on the request path, so an unexpected shape
    raises instead of silently compiling.
    """

    def __init__(
        self,
        operators: dict[str, BoundOperator],
        on_compile: Callable[[KernelKey, float], None] | None = None,
        devices: int = 1,
    ) -> None:
        self._operators = operators
        self._on_compile = on_compile
        local = jax.local_devices()
        count = len(local) if devices == 0 else min(devices, len(local))
        # Rows are independent, so the batch axis splits across devices with no communication.
        self._mesh = Mesh(np.array(local[:count]), ("batch",)) if count > 1 else None
        self._executables: dict[KernelKey, jax.stages.Compiled] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: KernelKey) -> bool:
        return key in self._executables

    def __len__(self) -> int:
        return len(self._executables)

    def get(self, key: KernelKey) -> jax.stages.Compiled:
        """The executable of ``key``, compiling it now if it is not there yet."""
        executable = self._executables.get(key)
        if executable is not None:
            return executable
        with self._lock:
            executable = self._executables.get(key)
            if executable is None:
                executable = self._compile(key)
                self._executables[key] = executable
        return executable

    def sharding(self, key: KernelKey) -> NamedSharding | None:
        """How ``key``'s arguments and outputs are laid out (None: one device)."""
        mesh = self._mesh
        if mesh is None or key.bucket.rows % mesh.size:
            return None
        return NamedSharding(mesh, PartitionSpec("batch"))

    def _compile(self, key: KernelKey) -> jax.stages.Compiled:
        started = time.perf_counter()
        function = kernel_function(self._operators[key.operator], key)
        sharding = self.sharding(key)
        if sharding is None:
            jitted = jax.jit(function)
        else:  # every argument and output has the rows on its leading axis
            jitted = jax.jit(function, in_shardings=sharding, out_shardings=sharding)
        executable = jitted.lower(*argument_shapes(key)).compile()
        if self._on_compile is not None:
            self._on_compile(key, time.perf_counter() - started)
        return executable
