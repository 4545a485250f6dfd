"""Run in a fresh process with 4 host devices (see test_sharding.py): sharded == single device.

Checks, for every operator with both derivatives on ragged rows and per-row k: the compiled
kernel's outputs live on all 4 devices, equal the single-device kernel's, and equal the core on
each unpadded row; then the same through the HTTP app, with no compilation after warm-up.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import numpy as np

import core
from service.device.buckets import ShapeBucket
from service.device.kernels import CompiledKernels, KernelInputs, KernelKey, arguments, selector
from service.device.operators import bind_operators
from service.device.variants import form_of, variant_table
from service.observability.compile_events import compile_stats, start_counting
from service.settings import Settings

ROWS, N = 8, 64  # the test servers' cover: check_app finds it compiled by check_kernels


def check_kernels() -> None:
    assert len(jax.devices()) == 4, jax.devices()
    operators = bind_operators(Settings.from_env({}).p_values)  # the app's variants
    sharded, single = CompiledKernels(devices=0), CompiledKernels(devices=1)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, N + 1, ROWS).astype(np.int32)
    ks = np.minimum(rng.integers(1, 6, ROWS), lengths).astype(np.int32)
    eps = rng.uniform(0.05, 1.0, ROWS).astype(np.float32)
    x, t, c = (rng.normal(size=(ROWS, N)).astype(np.float32) for _ in range(3))
    for a in (x, t, c):
        a[np.arange(N)[None, :] >= lengths[:, None]] = 0.0
    inputs = KernelInputs(x, ks, eps, lengths, t, c)
    forms = {
        name: form_of(operators[name], "mask", operators[name].static({}))
        for name in ("sparse", "soft", "hard")
    }
    cover = KernelKey(variant_table(operators), True, ShapeBucket(ROWS, N))
    key = KernelKey(tuple(form.variant for form in forms.values()), True, ShapeBucket(ROWS, N))
    assert sharded.sharding(cover) is not None and single.sharding(key) is None
    sharded.build(cover)
    single.build(key)
    for operator, form in forms.items():
        outs = sharded.get(cover)(*arguments(cover, selector(cover, form), inputs))
        for out in outs:
            assert len(out.sharding.device_set) == 4, (operator, out.sharding)
        refs = single.get(key)(*arguments(key, selector(key, form), inputs))
        for got, want in zip(outs, refs, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
        fn = {
            "sparse": core.sparse_topk_mask,
            "soft": core.soft_topk_mask,
            "hard": core.hard_topk_mask,
        }[operator]
        # The core on the ragged batch (one compile; its ragged rows equal the unpadded ones:
        # tests/core), where each row's own call would compile once per length.
        kw = {} if operator == "hard" else {"epsilon": eps}
        want_out, want_jvp = jax.jvp(functools.partial(fn, k=ks, lengths=lengths, **kw), (x,), (t,))
        real = np.arange(N)[None, :] < lengths[:, None]
        np.testing.assert_allclose(np.where(real, outs[0], 0), want_out, atol=2e-5)
        np.testing.assert_allclose(np.where(real, outs[1], 0), want_jvp, atol=2e-4)
    # A bucket the device count does not divide runs on one device.
    odd = KernelKey((forms["hard"].variant,), False, ShapeBucket(2, N))
    assert sharded.sharding(odd) is None


def check_app() -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.serving import small_settings

    start_counting()
    settings = small_settings()
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            pass
        rows = ([[0.3, 0.1, 0.25, -0.4, 0.2], [1.0, 2.0], [0.5, -1.0, 2.0, 0.1]] * 3)[:8]
        body = {"x": rows, "k": 1, "tangent": rows}
        assert settings.devices == 0  # the default: every local device
        before = compile_stats().compilations
        answer = client.post("/v1/topk", json=body)
        assert answer.status_code == 200, answer.text
        assert compile_stats().compilations == before, "compiled on the request path"
        for row, result in zip(rows, answer.json()["rows"], strict=True):
            want = np.asarray(core.sparse_topk_mask(np.asarray(row, np.float32), 1))
            got = np.zeros(len(row), np.float32)
            got[result["indices"]] = result["values"]
            np.testing.assert_allclose(got, want, atol=2e-5)
        metrics = client.get("/metrics").text
        assert 'device_count="4"' in metrics


if __name__ == "__main__":
    assert "--xla_force_host_platform_device_count=4" in os.environ.get("XLA_FLAGS", "")
    check_kernels()
    check_app()
    sys.stdout.write("sharded ok\n")
