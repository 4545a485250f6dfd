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


def test_a_bucket_holds_at_most_max_entries_and_more_rows_go_in_more_calls() -> None:
    ladder = BucketLadder((1, 2, 4, 8, 16), (16, 32, 64), max_entries=128)
    assert ladder.bucket_for(16, 16) == ShapeBucket(8, 16)
    assert ladder.bucket_for(3, 64) == ShapeBucket(2, 64)
    assert ladder.bucket_for(1, 64) == ShapeBucket(1, 64)
    assert ladder.most_rows(64) == 2
    assert BucketLadder((1, 2), (16, 256), max_entries=128).most_rows(256) == 1  # never 0


def test_buckets_parse_from_rows_x_n() -> None:
    assert ShapeBucket.parse("16x1024") == ShapeBucket(16, 1024)
    assert ShapeBucket.parse("16x1024").entries == 16 * 1024
    with pytest.raises(ValueError, match="ROWSxN"):
        ShapeBucket.parse("0x16")


def test_beyond_the_largest_rung_is_an_error() -> None:
    with pytest.raises(ValueError, match="n=65"):
        LADDER.bucket_for(1, 65)
    with pytest.raises(ValueError, match="rows=9"):
        LADDER.row_rung(9)


def test_buckets_print_as_rows_by_n() -> None:
    assert str(ShapeBucket(4, 32)) == "4x32"
