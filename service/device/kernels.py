"""Ahead-of-time compiled kernels: one executable per (variants, lanes, shape bucket).

A kernel computes any of its :class:`~service.device.variants.Variant` s, chosen per call by data:

    kernel(selector, x, [tangent, cotangent,] k, epsilon, lengths) -> (out,) | (out, jvp, vjp)

``selector`` is ``int32[5]``: the variant's index in the kernel's table (a ``lax.switch``: only
that branch runs), then the four flags of its :class:`~service.device.variants.Form` (take ``|x|``
first, multiply by ``x`` after, take ``-x`` first, negate after). Every other argument has the bucket's rows on its leading axis;
``k``, ``epsilon`` and ``lengths`` are per-row data, so any k, epsilon or row length within a
bucket reuses the executable. A kernel with *lanes* also takes a tangent and a cotangent and
returns the JVP and the VJP with respect to ``x``, both from one ``jax.linearize`` (the core's
custom JVP rule runs once; the VJP is its transpose); a request without them sends zeros.

Why so few, so wide: XLA compile time is per executable and roughly per branch (about 1 s each on
the CPU of bench/RESULTS.md), and one executable of 28 branches compiles in about half the time of
28 executables of one. The engine compiles a few *cover* kernels holding every variant at start-up
and single-variant kernels later, in the background (see :mod:`service.device.engine`).

Only ``jax.stages.Compiled`` objects are called on the request path, so an unexpected shape
raises instead of silently compiling.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import core
from api.registry import OPERATORS, Operator
from service.device.buckets import ShapeBucket
from service.device.executable_store import ExecutableStore
from service.device.variants import Form, Variant

log = logging.getLogger(__name__)

# The operator of every core function (its registry entry says whether it takes k and epsilon).
_SPECS: dict[str, Operator] = {
    function: operator for operator in OPERATORS for function in operator.outputs.values()
}

Source = Literal["compiled", "loaded"]

# The variant's index, then the four flags of its Form.
SELECTOR_LENGTH = 5


@dataclass(frozen=True, order=True)
class KernelKey:
    """Everything that selects one executable."""

    variants: tuple[Variant, ...]
    lanes: bool  # takes a tangent and a cotangent, returns the JVP and VJP lanes too
    bucket: ShapeBucket

    def __str__(self) -> str:
        what = (
            str(self.variants[0]) if len(self.variants) == 1 else f"{len(self.variants)} variants"
        )
        return f"{what}{' with lanes' if self.lanes else ''} at {self.bucket}"


@dataclass(frozen=True)
class KernelInputs:
    """The padded host arrays of one device call, in the bucket's shape."""

    x: np.ndarray  # (rows, n) float32
    k: np.ndarray  # (rows,) int32
    epsilon: np.ndarray  # (rows,) float32
    lengths: np.ndarray  # (rows,) int32
    tangent: np.ndarray | None = None  # (rows, n) float32
    cotangent: np.ndarray | None = None  # (rows, n) float32


def selector(key: KernelKey, form: Form) -> np.ndarray:
    """The ``selector`` argument that makes ``key``'s kernel compute ``form``."""
    index = key.variants.index(form.variant)
    flags = (form.of_magnitude, form.times_x, form.of_negation, form.negated)
    return np.array([index, *flags], dtype=np.int32)


def _core_call(variant: Variant) -> Callable[..., jax.Array]:
    function = getattr(core, variant.function)
    spec = _SPECS[variant.function]
    static = dict(variant.static)

    def call(x: jax.Array, k: jax.Array, epsilon: jax.Array, lengths: jax.Array) -> jax.Array:
        keywords: dict[str, Any] = {"lengths": lengths, **static}
        if spec.takes_epsilon:
            keywords["epsilon"] = epsilon
        out = function(x, k, **keywords) if spec.takes_k else function(x, **keywords)
        # The tests run with x64 on; never let a float64 constant of the core widen the output.
        return jnp.asarray(out, dtype=jnp.float32)

    return call


def _branch(variant: Variant, lanes: bool) -> Callable[..., tuple[jax.Array, ...]]:
    call = _core_call(variant)

    def branch(flags: jax.Array, x: jax.Array, *rest: jax.Array) -> tuple[jax.Array, ...]:
        *directions, k, epsilon, lengths = rest

        def read(x_: jax.Array) -> jax.Array:
            a = jnp.where(flags[0] != 0, jnp.abs(x_), x_)
            y = call(jnp.where(flags[2] != 0, -a, a), k, epsilon, lengths)
            y = jnp.where(flags[3] != 0, -y, y)
            return jnp.where(flags[1] != 0, x_ * y, y)

        if not lanes:
            return (read(x),)
        out, linear = jax.linearize(read, x)
        (vjp,) = jax.linear_transpose(linear, x)(directions[1])
        return out, linear(directions[0]), vjp

    return branch


@functools.cache
def kernel_function(variants: tuple[Variant, ...], lanes: bool) -> Callable[..., Any]:
    """The traceable function of a kernel (one object per table, so that JAX's in-memory caches
    serve every app of a process, e.g. the test servers, from one compilation)."""
    branches = [_branch(variant, lanes) for variant in variants]

    def kernel(select: jax.Array, *arguments: jax.Array) -> tuple[jax.Array, ...]:
        if len(branches) == 1:
            return branches[0](select[1:], *arguments)
        return jax.lax.switch(select[0], branches, select[1:], *arguments)

    return kernel


def argument_shapes(key: KernelKey) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Abstract arguments of the kernel for ``lower``: explicit dtypes, never the defaults."""
    rows, n = key.bucket.rows, key.bucket.n
    matrix = jax.ShapeDtypeStruct((rows, n), np.float32)
    return (
        jax.ShapeDtypeStruct((SELECTOR_LENGTH,), np.int32),
        matrix,
        *([matrix, matrix] if key.lanes else []),
        jax.ShapeDtypeStruct((rows,), np.int32),
        jax.ShapeDtypeStruct((rows,), np.float32),
        jax.ShapeDtypeStruct((rows,), np.int32),
    )


def arguments(key: KernelKey, select: np.ndarray, inputs: KernelInputs) -> tuple[Any, ...]:
    """Positional arguments of ``key``'s kernel."""
    directions: tuple[Any, ...] = ()
    if key.lanes:
        assert inputs.tangent is not None and inputs.cotangent is not None, "lanes need both"
        directions = (inputs.tangent, inputs.cotangent)
    return (select, inputs.x, *directions, inputs.k, inputs.epsilon, inputs.lengths)


class CompiledKernels:
    """The executables built so far: compiled ahead of time, or loaded from an
    :class:`~service.device.executable_store.ExecutableStore`.

    :meth:`build` may run on several threads at once (XLA releases the GIL while it compiles);
    :meth:`get` only looks up, so the request path can never compile.
    """

    def __init__(
        self,
        on_built: Callable[[KernelKey, float, Source], None] | None = None,
        devices: int = 1,
        store: ExecutableStore | None = None,
    ) -> None:
        self._on_built = on_built
        local = jax.local_devices()
        count = len(local) if devices == 0 else min(devices, len(local))
        self.devices = local[:count]
        # Rows are independent, so the batch axis splits across devices with no communication.
        self._mesh = Mesh(np.array(self.devices), ("batch",)) if count > 1 else None
        self._store = store
        self._executables: dict[KernelKey, jax.stages.Compiled] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: KernelKey) -> bool:
        return key in self._executables

    def __len__(self) -> int:
        return len(self._executables)

    def keys(self) -> list[KernelKey]:
        with self._lock:
            return list(self._executables)

    def get(self, key: KernelKey) -> jax.stages.Compiled:
        """The executable of ``key`` (``KeyError`` if it was never built: nothing compiles here)."""
        return self._executables[key]

    def build(self, key: KernelKey, *, compile_missing: bool = True) -> Source | None:
        """Load ``key``'s executable from the store, else compile it (and store it). None when
        nothing was done: it was built already, or it is not stored and ``compile_missing`` is
        off."""
        if key in self._executables:
            return None
        started = time.perf_counter()
        source: Source = "loaded"
        sharding = self.sharding(key)
        executable = None
        if self._store is not None:
            executable = self._store.load(key, None if sharding is None else self.devices)
        if executable is None:
            if not compile_missing:
                return None
            source = "compiled"
            executable = self._compile(key, sharding)
            if self._store is not None:
                self._store.save(key, executable)
        with self._lock:
            self._executables.setdefault(key, executable)
        if self._on_built is not None:
            self._on_built(key, time.perf_counter() - started, source)
        return source

    def sharding(self, key: KernelKey) -> NamedSharding | None:
        """How ``key``'s arguments and outputs are laid out (None: one device)."""
        mesh = self._mesh
        if mesh is None or key.bucket.rows % mesh.size:
            return None
        return NamedSharding(mesh, PartitionSpec("batch"))

    def _compile(self, key: KernelKey, sharding: NamedSharding | None) -> jax.stages.Compiled:
        function = kernel_function(key.variants, key.lanes)
        if sharding is None:
            jitted = jax.jit(function)
        else:  # the selector on every device, every other argument and output split by rows
            replicated = NamedSharding(sharding.mesh, PartitionSpec())
            inputs = (replicated, *[sharding] * (len(argument_shapes(key)) - 1))
            jitted = jax.jit(function, in_shardings=inputs, out_shardings=sharding)
        return jitted.lower(*argument_shapes(key)).compile()
