"""Bucket choice: the smallest rung that fits, and a clear error beyond the largest."""

from __future__ import annotations

import pytest

from service.device.buckets import BucketLadder, ShapeBucket

LADDER = BucketLadder((1, 2, 4, 8), (16, 32, 64))


@pytest.mark.parametrize(
    ("rows", "n", "bucket"),
    [(1, 1, ShapeBucket(1, 16)), (3, 16, ShapeBucket(4, 16)), (8, 17, ShapeBucket(8, 32))],
)
def test_the_smallest_fitting_bucket_is_chosen(rows: int, n: int, bucket: ShapeBucket) -> None:
    assert LADDER.bucket_for(rows, n) == bucket


def test_beyond_the_largest_rung_is_an_error() -> None:
    with pytest.raises(ValueError, match="n=65"):
        LADDER.bucket_for(1, 65)
    with pytest.raises(ValueError, match="rows=9"):
        LADDER.row_rung(9)


def test_buckets_print_as_rows_by_n() -> None:
    assert str(ShapeBucket(4, 32)) == "4x32"
