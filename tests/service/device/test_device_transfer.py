"""Batches go host -> device -> host the way the engine moves them: NumPy in, device arrays out,
NumPy back, with the JVP and VJP lanes, and a direction already resident on the device (the
engine's zero lanes) or staged in pinned host memory (the accelerators' fast transfer path) gives
the same answer bit for bit.

On an accelerator these are real transfers (bench/gpu_check.sh runs this file there); on the CPU
they are copies within host memory, and the file keeps the path honest.
"""

from __future__ import annotations

import jax
import numpy as np

import core
from service.device.buckets import ShapeBucket
from service.device.kernels import CompiledKernels, KernelInputs, KernelKey, arguments, selector
from service.device.operators import bind_operators
from service.device.variants import form_of

ROWS, N = 8, 64
SPARSE = bind_operators((4 / 3, 2.0))["sparse"]
FORM = form_of(SPARSE, "mask", SPARSE.static({}))  # the default: p=4/3, solver auto
KEY = KernelKey((FORM.variant,), True, ShapeBucket(ROWS, N))


def test_a_batch_crosses_to_the_device_and_back_exactly() -> None:
    kernels = CompiledKernels(devices=1)
    assert kernels.build(KEY) == "compiled"
    device = kernels.devices[0]
    rng = np.random.default_rng(0)
    x, t, c = (rng.normal(size=(ROWS, N)).astype(np.float32) for _ in range(3))
    k = np.arange(1, ROWS + 1, dtype=np.int32)
    eps = np.full(ROWS, 0.1, np.float32)
    lengths = np.array([64, 64, 50, 33, 64, 17, 64, 9], np.int32)
    for a in (x, t, c):
        a[np.arange(N)[None, :] >= lengths[:, None]] = 0.0
    inputs = KernelInputs(x, k, eps, lengths, tangent=t, cotangent=c)
    select = selector(KEY, FORM)
    executable = kernels.get(KEY)
    on_device = executable(*arguments(KEY, select, inputs))
    assert all(a.devices() == {device} for a in on_device)  # the outputs live on the device
    out, jvp, vjp = (np.asarray(a) for a in on_device)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in (out, jvp, vjp))

    def mask(z: jax.Array) -> jax.Array:
        return core.sparse_topk_mask(z, k, epsilon=eps, lengths=lengths)

    expected, expected_jvp = jax.jvp(mask, (x,), (t,))
    (expected_vjp,) = jax.vjp(mask, x)[1](c)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=-1), k, rtol=1e-5)
    np.testing.assert_allclose(jvp, expected_jvp, atol=1e-5)
    np.testing.assert_allclose(vjp, expected_vjp, atol=1e-5)

    # A direction already on the device (the engine's zero lanes), mixed with host arrays.
    resident = jax.device_put(np.zeros((ROWS, N), np.float32), device)
    mixed = KernelInputs(x, k, eps, lengths, tangent=resident, cotangent=c)  # type: ignore[arg-type]
    out2, jvp2, vjp2 = (np.asarray(a) for a in executable(*arguments(KEY, select, mixed)))
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(vjp2, vjp)
    assert not np.any(jvp2)

    # Staged in pinned host memory first, then moved to the device (where the kind exists).
    kinds = {memory.kind for memory in device.addressable_memories()}
    if "pinned_host" in kinds:
        pinned = jax.sharding.SingleDeviceSharding(device, memory_kind="pinned_host")
        staged = [jax.device_put(a, pinned) for a in arguments(KEY, select, inputs)]
        assert all(a.sharding.memory_kind == "pinned_host" for a in staged)
        home = jax.sharding.SingleDeviceSharding(device, memory_kind=device.default_memory().kind)
        moved = [jax.device_put(a, home) for a in staged]
        out3, jvp3, vjp3 = (np.asarray(a) for a in executable(*moved))
        np.testing.assert_array_equal(out3, out)
        np.testing.assert_array_equal(jvp3, jvp)
        np.testing.assert_array_equal(vjp3, vjp)
