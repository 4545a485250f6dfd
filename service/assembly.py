"""Host-side halves of a device call: stack requests into one padded batch, and split it back.

Requests arrive as checked lists; NumPy lays out a whole batch at once (one conversion for
equal-length rows), never one request at a time, and never ``jnp.pad`` (an eager JAX call would
compile once per raw shape). Padding rows get length 1 and k 1 rather than 0, so that no solver
ever sees an empty row, and are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from service.buckets import ShapeBucket
from service.kernels import KernelInputs, KernelKey
from service.prepared import PreparedRequest


def _stack(
    groups: Sequence[list[list[float]] | np.ndarray], lengths: list[int], bucket: ShapeBucket
) -> np.ndarray:
    """The rows of every request, in order, zero-padded to the bucket's shape as float32."""
    matrix = np.zeros((bucket.rows, bucket.n), dtype=np.float32)
    shortest = min(lengths)
    if shortest == max(lengths) and not any(isinstance(group, np.ndarray) for group in groups):
        # One NumPy conversion for the whole batch.
        matrix[: len(lengths), :shortest] = [row for group in groups for row in group]
        return matrix
    start = 0
    for group in groups:
        if isinstance(group, np.ndarray):  # already a zero-padded matrix
            matrix[start : start + len(group), : group.shape[1]] = group
        else:
            for i, row in enumerate(group, start):
                matrix[i, : len(row)] = row
        start += len(group)
    return matrix


def _per_row(items: Sequence[PreparedRequest], spare: int) -> tuple[list[int], list[float]]:
    ks: list[int] = []
    epsilons: list[float] = []
    for item in items:
        ks += item.k
        epsilon = item.epsilon
        epsilons += epsilon if isinstance(epsilon, list) else [epsilon] * len(item.lengths)
    return ks + [1] * spare, epsilons + [1.0] * spare


def pad_batch(items: Sequence[PreparedRequest], bucket: ShapeBucket) -> KernelInputs:
    """One :class:`KernelInputs` of ``bucket``'s shape holding every row of ``items`` in order."""
    lengths = [n for item in items for n in item.lengths]
    spare = bucket.rows - len(lengths)
    if spare < 0 or max(lengths) > bucket.n:
        raise ValueError(f"{len(lengths)} rows of up to {max(lengths)} do not fit in {bucket}")
    ks, epsilons = _per_row(items, spare)
    first = items[0]
    tangent = cotangent = None
    if first.tangent is not None:
        tangent = _stack(
            [item.tangent for item in items if item.tangent is not None], lengths, bucket
        )
    if first.cotangent is not None:
        cotangent = _stack(
            [item.cotangent for item in items if item.cotangent is not None], lengths, bucket
        )
    return KernelInputs(
        x=_stack([item.x for item in items], lengths, bucket),
        k=np.array(ks, dtype=np.int32),
        epsilon=np.array(epsilons, dtype=np.float32),
        lengths=np.array(lengths + [1] * spare, dtype=np.int32),
        tangent=tangent,
        cotangent=cotangent,
    )


class NonFiniteOutput(ArithmeticError):
    """The kernel produced NaN or Inf for a valid request: a server fault, never sent as null."""


class SparseBatch:
    """The support of every row of a batch in descending output order, sorted once for all rows."""

    def __init__(self, out: np.ndarray, lengths: np.ndarray) -> None:
        inside = np.arange(out.shape[1]) < lengths[:, None]
        support = (out != 0) & inside
        # A stable sort of the negated outputs (ties keep ascending index order) with everything
        # outside the support sorted last; each row's support is then a prefix of its order.
        self.order = np.argsort(np.where(support, -out, np.inf), axis=1, kind="stable")
        self.counts = support.sum(axis=1).tolist()

    def gather(self, values: np.ndarray) -> np.ndarray:
        """``values`` rearranged into the support order (rows stay C-contiguous)."""
        return np.take_along_axis(values, self.order, axis=1)


def sparse_rows(
    batch: SparseBatch,
    sorted_out: np.ndarray,
    sorted_jvp: np.ndarray | None,
    vjp: np.ndarray | None,
    rows: range,
    lengths: list[int],
    ks: list[int],
) -> list[dict[str, object]]:
    """Per row of ``rows``: its support, the output there, and the derivatives."""
    answers: list[dict[str, object]] = []
    for i, n, k in zip(rows, lengths, ks, strict=True):
        size = batch.counts[i]
        answer: dict[str, object] = {
            "indices": batch.order[i, :size],
            "values": sorted_out[i, :size],
        }
        if sorted_jvp is not None:
            answer["jvp"] = sorted_jvp[i, :size]
        if vjp is not None:
            answer["vjp"] = vjp[i, :n]
        answer["n"] = n
        answer["k"] = k
        answers.append(answer)
    return answers


def dense_rows(
    out: np.ndarray, jvp: np.ndarray | None, vjp: np.ndarray | None, lengths: list[int]
) -> list[dict[str, object]]:
    """Per row: the output, and the derivatives, over the row's real entries only."""
    rows: list[dict[str, object]] = []
    for i, n in enumerate(lengths):
        answer: dict[str, object] = {"values": np.ascontiguousarray(out[i, :n])}
        if jvp is not None:
            answer["jvp"] = np.ascontiguousarray(jvp[i, :n])
        if vjp is not None:
            answer["vjp"] = np.ascontiguousarray(vjp[i, :n])
        answer["n"] = n
        rows.append(answer)
    return rows


def split_batch(
    key: KernelKey,
    outputs: Sequence[np.ndarray],
    items: Sequence[PreparedRequest],
    dense: bool = False,
) -> list[bytes | BaseException]:
    """The JSON answer of each request of the batch, or the exception that concerns only it.

    Top-k answers are sparse (support and values); ``dense`` answers give every entry.
    """
    out = outputs[0]
    jvp = outputs[1] if key.takes_tangent else None
    vjp = outputs[-1] if key.takes_cotangent else None
    finite_rows = np.isfinite(out).all(axis=1)
    for derivative in (jvp, vjp):
        if derivative is not None:
            finite_rows &= np.isfinite(derivative).all(axis=1)
    finite = finite_rows.tolist()
    if not dense:
        lengths = np.array([n for item in items for n in item.lengths], dtype=np.int32)
        real = len(lengths)
        batch = SparseBatch(out[:real], lengths)
        sorted_out = batch.gather(out[:real])
        sorted_jvp = None if jvp is None else batch.gather(jvp[:real])
    answers: list[bytes | BaseException] = []
    start = 0
    for item in items:
        stop = start + item.rows
        try:
            if not all(finite[start:stop]):
                raise NonFiniteOutput("the kernel returned a non-finite value")
            payload: dict[str, object]
            if dense:
                part_jvp = None if jvp is None else jvp[start:stop]
                part_vjp = None if vjp is None else vjp[start:stop]
                rows = dense_rows(out[start:stop], part_jvp, part_vjp, item.lengths)
                payload = {"operator": key.operator, "rows": rows}
            else:
                rows = sparse_rows(
                    batch, sorted_out, sorted_jvp, vjp, range(start, stop), item.lengths, item.k
                )
                payload = {"operator": key.operator, "output": key.output, "rows": rows}
            answers.append(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
        except Exception as error:  # noqa: BLE001 — this request's fault stays with this request
            answers.append(error)
        start = stop
    return answers
