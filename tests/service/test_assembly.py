"""Splitting a batch back into sparse answers: the vectorised support order vs a per-row loop."""

from __future__ import annotations

import numpy as np
import orjson

from service.assembly import SparseBatch


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
