"""The compacting row loop gives exactly what the plain lock-step loop gives."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core._lockstep import iterate_rows


class Babylon(NamedTuple):
    root: jax.Array  # (B,) current estimate of sqrt(target)
    done: jax.Array  # (B,) bool
    iterations: jax.Array  # (B,) int32


def _step(state: Babylon, target: jax.Array) -> Babylon:
    """One Heron step per unfinished row; finished rows are left exactly as they are."""
    active = ~state.done & (state.iterations < 60)
    new = 0.5 * (state.root + target / state.root)
    done = jnp.abs(new - state.root) <= 1e-12 * new
    return Babylon(
        root=jnp.where(active, new, state.root),
        done=jnp.where(active, done, state.done),
        iterations=state.iterations + active.astype(jnp.int32),
    )


def _unfinished(state: Babylon) -> jax.Array:
    return ~state.done & (state.iterations < 60)


@pytest.mark.parametrize("rows", [1, 5, 8, 64, 300])
def test_compacted_loop_equals_the_lock_step_loop(rows):
    # Targets over many orders of magnitude: from 1 the iteration counts differ widely per row.
    target = jnp.asarray(10.0 ** np.random.default_rng(rows).uniform(-8, 12, rows))
    start = Babylon(jnp.ones(rows), jnp.zeros(rows, bool), jnp.zeros(rows, jnp.int32))

    def lock_step(s):
        return jax.lax.while_loop(lambda t: jnp.any(_unfinished(t)), lambda t: _step(t, target), s)

    expected = jax.jit(lock_step)(start)
    got = jax.jit(lambda s: iterate_rows(_step, s, target, unfinished=_unfinished))(start)
    np.testing.assert_array_equal(got.iterations, expected.iterations)
    np.testing.assert_array_equal(got.root, expected.root)
    assert bool(jnp.all(got.done))
    np.testing.assert_allclose(got.root, np.sqrt(np.asarray(target)), rtol=1e-12)
    spread = int(jnp.max(got.iterations)) - int(jnp.min(got.iterations))
    assert spread >= 10 or rows < 8  # the stragglers really ran on the compacted batch
