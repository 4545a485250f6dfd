"""Row-wise iterative solvers without lock-step waste: finish the stragglers on a compacted batch.

A batched ``lax.while_loop`` runs every row until the slowest one has converged, so a batch whose
rows need 3 iterations on average and 12 at worst pays for 12 full-batch passes. ``iterate_rows``
runs the full batch only while many rows are unfinished, then gathers the remaining rows into a
batch of static size ``rows // compact_factor`` and finishes them there (one level: deeper
cascades cost more in gathers than they save on this CPU backend). Pure XLA (``top_k``,
gather, scatter), so it runs unchanged on CPU, GPU and TPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from jax import Array

State = TypeVar("State")
Rows = Any  # a pytree of arrays whose leading axis is the batch of rows


def _rows_of(tree: Any) -> int:
    return int(jax.tree.leaves(tree)[0].shape[0])


def iterate_rows(
    step: Callable[[State, Rows], State],
    state: State,
    rows: Rows,
    *,
    unfinished: Callable[[State], Array],
    compact_factor: int = 8,
) -> State:
    """Apply ``state = step(state, rows)`` until ``unfinished(state)`` is False for every row.

    Args:
        step: one iteration for all rows; it must leave finished rows unchanged (it is also called
            on finished rows that fill the compacted batch).
        state: pytree of per-row arrays (leading axis: rows), the iterate.
        rows: pytree of per-row inputs that ``step`` reads (leading axis: rows).
        unfinished: ``(rows,)`` bool, rows that still need a step (not converged, under the cap).
        compact_factor: the stragglers' batch is ``rows // compact_factor`` (no compaction when
            that is 0).

    Returns:
        The final state, identical to running the plain batched loop (rows are independent).
    """
    batch = _rows_of(state)
    width = batch // compact_factor

    def any_unfinished(s: State) -> Array:
        return jnp.any(unfinished(s))

    def full_step(s: State) -> State:
        return step(s, rows)

    if width < 1:
        return jax.lax.while_loop(any_unfinished, full_step, state)

    def many_unfinished(s: State) -> Array:
        return jnp.sum(unfinished(s), dtype=jnp.int32) > width

    state = jax.lax.while_loop(many_unfinished, full_step, state)

    def finish_stragglers(s: State) -> State:
        _, index = jax.lax.top_k(unfinished(s).astype(jnp.float32), width)
        sub_state = jax.tree.map(lambda leaf: leaf[index], s)
        sub_rows = jax.tree.map(lambda leaf: leaf[index], rows)
        sub_state = jax.lax.while_loop(any_unfinished, lambda t: step(t, sub_rows), sub_state)
        return jax.tree.map(lambda leaf, sub: leaf.at[index].set(sub), s, sub_state)

    return jax.lax.cond(any_unfinished(state), finish_stragglers, lambda s: s, state)
