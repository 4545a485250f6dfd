"""The engine plans every batch onto a kernel that is already built, so nothing compiles on the
request path: a randomised sweep of every request kind at random shapes after warm-up, and the
planner's choices (exact bucket first, else the cheapest built kernel that fits)."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import httpx
import pytest

from service.device.buckets import ShapeBucket
from service.device.engine import Engine
from service.device.kernels import KernelKey
from service.device.operators import bind_operators
from service.device.variants import form_of, refusal
from service.observability.compile_events import compile_stats, start_counting
from tests.service.serving import ServerThread, metric, small_settings

DERIVATIVES = ("none", "jvp", "vjp", "both")


def requests_of_every_kind(settings: Any, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """(path, body) for every operator x output x derivative x compile-time knob, on both the
    /v1 routes and OIP, at random shapes up to the limits (ragged rows on /v1)."""
    operators = bind_operators(settings.p_values)
    out: list[tuple[str, dict[str, Any]]] = []
    for operator in operators.values():
        knobs = [p for p in operator.spec.parameters if p.compile_time]
        choices = [(False, True) if p.type == "bool" else p.choices for p in knobs]
        for values, output, derivative in itertools.product(
            itertools.product(*choices),  # type: ignore[arg-type]
            operator.functions,
            DERIVATIVES,
        ):
            given = dict(zip([p.name for p in knobs], values, strict=True))
            if refusal(operator.name, operator.static(given)) is not None:
                continue
            rows = rng.choice([1, rng.randint(1, settings.max_rows), settings.max_rows])
            n = rng.choice([1, rng.randint(1, settings.max_n), settings.max_n])
            oip = rng.random() < 0.3
            lengths = [n] * rows if oip else [rng.randint(1, n) for _ in range(rows)]
            x = [[rng.gauss(0, 1) for _ in range(m)] for m in lengths]
            body: dict[str, Any] = {"x": x, **given}
            if operator.spec.takes_k:
                body["k"] = [rng.randint(1, m) for m in lengths]
            if derivative in ("jvp", "both"):
                body["tangent"] = [[rng.gauss(0, 1) for _ in row] for row in x]
            if derivative in ("vjp", "both"):
                body["cotangent"] = [[rng.gauss(0, 1) for _ in row] for row in x]
            if operator.family == "topk":
                body |= {"operator": operator.name, "output": output}
            if not oip:
                out.append((operator.spec.route, body))
                continue
            model = "topk" if operator.family == "topk" else operator.name
            inputs = [
                {"name": name, "shape": [rows, n], "datatype": "FP32", "data": body.pop(name)}
                for name in ("x", "tangent", "cotangent")
                if name in body
            ]
            if "k" in body:
                k = body.pop("k")
                inputs.append({"name": "k", "shape": [rows], "datatype": "INT32", "data": k})
            out.append((f"/v2/models/{model}/infer", {"inputs": inputs, "parameters": body}))
    rng.shuffle(out)
    return out


def test_a_random_sweep_of_every_request_kind_never_compiles(server: ServerThread) -> None:
    start_counting()
    settings = server.runtime.settings
    requests = requests_of_every_kind(settings, random.Random(14))
    # sparse: 3 outputs x 4 derivatives x 7 (p, solver) pairs; soft 4; hard 12; sort, rank and
    # isotonic 16 each (4 derivatives x 4 knob pairs): 148 with the default p values.
    assert len(requests) >= 148
    request_compiles = 'topk_kernel_compilations_total{phase="request"}'
    before = compile_stats().compilations

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            answers: list[httpx.Response] = []
            for wave in range(0, len(requests), 16):  # concurrent waves: batches form too
                answers += await asyncio.gather(
                    *(client.post(path, json=body) for path, body in requests[wave : wave + 16])
                )
            return answers

    answers = asyncio.run(send_all())
    for (path, body), answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, (path, body, answer.text[:300])
    assert compile_stats().compilations == before, "an XLA compile on the request path"
    assert metric(server, request_compiles) == 0
    assert metric(server, 'topk_kernel_compilations_total{phase="background"}') == 0


# ------------------------------------------------------------------------------ the planner


@pytest.fixture(scope="module")
def engine() -> Any:
    """An engine whose kernels are stand-ins (planning never calls them)."""
    settings = small_settings(max_entries=512, cover_buckets=("8x32", "2x64"))
    operators = bind_operators(settings.p_values)
    engine = Engine(settings, operators)
    for key in engine.covers:
        engine.kernels._executables[key] = object()  # type: ignore[assignment]
    engine._ready_covers = engine.covers
    engine.warm = True
    yield engine
    engine.close()


def built(engine: Engine, key: KernelKey) -> None:
    engine.kernels._executables[key] = object()  # type: ignore[assignment]
    engine._kernels_of[key.variants[0]] = (*engine._kernels_of.get(key.variants[0], ()), key)


def test_the_planner_takes_the_exact_bucket_else_the_cheapest_kernel_that_fits(
    engine: Engine,
) -> None:
    hard = engine.operators["hard"]
    form = form_of(hard, "mask", hard.static({}))
    small, long = engine.covers
    assert engine.plan(form, False, 3, 16) == (small, 3)  # only the covers are built
    assert engine.plan(form, False, 20, 32) == (small, 8)  # in 8-row calls
    assert engine.plan(form, True, 3, 64) == (long, 2)  # the only cover holding n=64
    exact = KernelKey((form.variant,), False, ShapeBucket(4, 16))
    built(engine, exact)
    assert engine.plan(form, False, 3, 16) == (exact, 3)
    assert engine.plan(form, True, 3, 16) == (small, 3)  # the exact one has no lanes
    assert engine.plan(form, False, 8, 16)[0] == small  # tiny: one call beats two calls of 4
    sort = engine.operators["sort"]
    other = form_of(sort, "values", sort.static({}))
    assert engine.plan(other, False, 3, 16) == (small, 3)  # another variant: not its kernel


def test_with_compiling_on_demand_off_the_planner_never_schedules_a_build(engine: Engine) -> None:
    soft = engine.operators["soft"]
    engine.plan(form_of(soft, "mask", soft.static({})), False, 1, 1)
    assert engine.pending == 0
