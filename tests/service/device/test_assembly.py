"""Splitting a batch back into sparse answers: the vectorised support order vs a per-row loop."""

from __future__ import annotations

import numpy as np
import orjson

from service.device.assembly import SparseBatch, pad_batch
from service.device.buckets import ShapeBucket
from service.device.work import BatchKey, WorkUnit


def support_one_row_at_a_time(row: np.ndarray) -> list[int]:
    """The contract, written plainly: non-zero entries by descending output, ties by index."""
    entries = [j for j in range(len(row)) if row[j] != 0]
    return sorted(entries, key=lambda j: (-row[j], j))


def test_every_row_lists_its_support_in_descending_order_with_ties_by_index() -> None:
    rng = np.random.default_rng(0)
    rows, n = 64, 12
    out = rng.choice([0.0, 0.0, 1.0, 0.5, -0.5, -2.0, 3.0], size=(rows, n)).astype(np.float32)
    out[:, -1] = 7.0  # beyond most rows' lengths: never part of their support
    lengths = rng.integers(1, n + 1, size=rows).astype(np.int32)
    batch = SparseBatch(out, lengths)
    sorted_out = batch.gather(out)
    for i in range(rows):
        expected = support_one_row_at_a_time(out[i, : lengths[i]])
        size = batch.counts[i]
        assert batch.order[i, :size].tolist() == expected
        assert sorted_out[i, :size].tolist() == out[i, expected].tolist()
        # Row slices stay C-contiguous, which orjson needs to serialise them without copies.
        orjson.dumps(batch.order[i, :size], option=orjson.OPT_SERIALIZE_NUMPY)
        orjson.dumps(sorted_out[i, :size], option=orjson.OPT_SERIALIZE_NUMPY)


def test_a_batch_is_laid_out_like_its_requests_one_row_at_a_time() -> None:
    """``pad_batch`` against a plain per-row construction: ragged and equal-length rows, one
    epsilon or one per row, tangents, and padding rows (length 1, k 1, epsilon 1)."""
    engine_key = BatchKey("sparse", "mask", "jvp", (("p", 2.0),), 8)
    requests = [
        WorkUnit(engine_key, [[1.0, 2, 3]], [2], 0.5, [3], [[0.1, 0.2, 0.3]], None),
        WorkUnit(
            engine_key, [[4.0], [5.0, 6.0]], [1, 1], [0.25, 2], [1, 2], [[1.0], [2.0, 3.0]], None
        ),
        WorkUnit(engine_key, [[7.0] * 8], [8], 1.0, [8], [[0.5] * 8], None),
    ]
    bucket = ShapeBucket(8, 8)
    inputs = pad_batch(requests, bucket)
    rows = [row for request in requests for row in request.x]
    tangents = [row for request in requests for row in request.tangent or []]
    expected_x = np.zeros((8, 8), np.float32)
    expected_t = np.zeros((8, 8), np.float32)
    for i, (row, tangent) in enumerate(zip(rows, tangents, strict=True)):
        expected_x[i, : len(row)] = row
        expected_t[i, : len(tangent)] = tangent
    np.testing.assert_array_equal(inputs.x, expected_x)
    assert inputs.tangent is not None and inputs.cotangent is None
    np.testing.assert_array_equal(inputs.tangent, expected_t)
    assert inputs.k.tolist() == [2, 1, 1, 8, 1, 1, 1, 1]
    assert inputs.lengths.tolist() == [3, 1, 2, 8, 1, 1, 1, 1]
    assert inputs.epsilon.tolist() == [0.5, 0.25, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert inputs.x.dtype == inputs.epsilon.dtype == np.float32
    assert inputs.k.dtype == inputs.lengths.dtype == np.int32
    equal = pad_batch(requests[2:] * 2, ShapeBucket(2, 8))  # equal lengths: one conversion
    np.testing.assert_array_equal(equal.x, np.full((2, 8), 7.0, np.float32))
