"""Host-side halves of a device call: stack requests into one padded batch, and split it back
into one :class:`Answer` (arrays) per request.

Requests arrive as checked lists; NumPy lays out a whole batch at once (one conversion for
equal-length rows), never one request at a time, and never ``jnp.pad`` (an eager JAX call would
compile once per raw shape). Padding rows get length 1 and k 1 rather than 0, so that no solver
ever sees an empty row, and are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from service.device.buckets import ShapeBucket
from service.device.kernels import KernelInputs
from service.device.work import WorkUnit


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


def _per_row(items: Sequence[WorkUnit], spare: int) -> tuple[list[int], list[float]]:
    ks: list[int] = []
    epsilons: list[float] = []
    for item in items:
        ks += item.k
        epsilon = item.epsilon
        epsilons += epsilon if isinstance(epsilon, list) else [epsilon] * len(item.lengths)
    return ks + [1] * spare, epsilons + [1.0] * spare


def pad_batch(items: Sequence[WorkUnit], bucket: ShapeBucket) -> KernelInputs:
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


def take_rows(inputs: KernelInputs, start: int, stop: int, bucket: ShapeBucket) -> KernelInputs:
    """Rows ``start:stop`` of a padded batch, padded again to ``bucket`` (one call's share of a
    batch that takes several; padding rows get length 1 and k 1, as in :func:`pad_batch`)."""
    rows, n = stop - start, inputs.x.shape[1]
    if (rows, n) == (bucket.rows, bucket.n):
        return _slice(inputs, start, stop)

    def matrix(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        padded = np.zeros((bucket.rows, bucket.n), dtype=np.float32)
        padded[:rows, :n] = values[start:stop]
        return padded

    def vector(values: np.ndarray, fill: float) -> np.ndarray:
        padded = np.full(bucket.rows, fill, dtype=values.dtype)
        padded[:rows] = values[start:stop]
        return padded

    x = matrix(inputs.x)
    assert x is not None
    return KernelInputs(
        x=x,
        k=vector(inputs.k, 1),
        epsilon=vector(inputs.epsilon, 1.0),
        lengths=vector(inputs.lengths, 1),
        tangent=matrix(inputs.tangent),
        cotangent=matrix(inputs.cotangent),
    )


def _slice(inputs: KernelInputs, start: int, stop: int) -> KernelInputs:
    def rows(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values[start:stop]

    return KernelInputs(
        inputs.x[start:stop],
        inputs.k[start:stop],
        inputs.epsilon[start:stop],
        inputs.lengths[start:stop],
        rows(inputs.tangent),
        rows(inputs.cotangent),
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


class BatchOutputs:
    """The host arrays of one device call, in the bucket's shape, plus, for a top-k batch, each
    row's support in descending output order (one stable sort for the whole batch)."""

    def __init__(
        self,
        out: np.ndarray,
        jvp: np.ndarray | None,
        vjp: np.ndarray | None,
        lengths: list[int],
        sparse: bool,
    ) -> None:
        self.out, self.jvp, self.vjp = out, jvp, vjp
        self.support: SparseBatch | None = None
        self.sorted_out = self.sorted_jvp = None
        if sparse:
            real = len(lengths)
            support = SparseBatch(out[:real], np.asarray(lengths, dtype=np.int32))
            self.support = support
            self.sorted_out = support.gather(out[:real])
            self.sorted_jvp = None if jvp is None else support.gather(jvp[:real])


class Answer(NamedTuple):
    """One request's share of a batch: rows ``start:stop`` of ``batch``, with their lengths and k.

    The arrays are the batch's own (no copies); each protocol encodes the answer at its edge."""

    batch: BatchOutputs
    start: int
    stop: int
    lengths: list[int]
    k: list[int]

    def dense(self, values: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` of a batch array, cut to the longest row of this request."""
        return values[self.start : self.stop, : max(self.lengths)]


def split_batch(
    out: np.ndarray,
    jvp: np.ndarray | None,
    vjp: np.ndarray | None,
    items: Sequence[WorkUnit],
    sparse: bool,
) -> list[Answer | BaseException]:
    """Each request's :class:`Answer`, or the exception that concerns only it (a non-finite
    output is a server fault, never sent as null). ``out``, ``jvp`` and ``vjp`` (None: not asked
    for) hold the batch's rows in order, and at least its longest row's entries; ``sparse``: find
    each row's support."""
    finite_rows = np.isfinite(out).all(axis=1)
    for derivative in (jvp, vjp):
        if derivative is not None:
            finite_rows &= np.isfinite(derivative).all(axis=1)
    finite = finite_rows.tolist()
    lengths = [n for item in items for n in item.lengths]
    batch = BatchOutputs(out, jvp, vjp, lengths, sparse)
    answers: list[Answer | BaseException] = []
    start = 0
    for item in items:
        stop = start + item.rows
        if all(finite[start:stop]):
            answers.append(Answer(batch, start, stop, item.lengths, item.k))
        else:
            answers.append(NonFiniteOutput("the kernel returned a non-finite value"))
        start = stop
    return answers
