"""Slice arithmetic: property tests over object sizes, slice sizes and ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.engine.slices import clip, slice_bounds, slice_count, slices_for_range


@st.composite
def object_and_range(draw: st.DrawFn) -> tuple[int, int, int, int]:
    slice_size = draw(st.integers(min_value=1, max_value=4096))
    size = draw(st.integers(min_value=1, max_value=50_000))
    first = draw(st.integers(min_value=0, max_value=size - 1))
    last = draw(st.integers(min_value=first, max_value=size - 1))
    return slice_size, size, first, last


@given(object_and_range())
def test_clipped_slices_reassemble_exactly_the_range(case: tuple[int, int, int, int]) -> None:
    slice_size, size, first, last = case
    obj = bytes(i % 251 for i in range(size))
    pieces = []
    for index in slices_for_range(first, last, slice_size):
        start, end = slice_bounds(index, slice_size, size)
        lo, hi = clip(index, slice_size, size, first, last)
        pieces.append(obj[start : end + 1][lo:hi])
    assert b"".join(pieces) == obj[first : last + 1]


@given(st.integers(min_value=1, max_value=4096), st.integers(min_value=0, max_value=100_000))
def test_slices_tile_the_object_without_gaps_or_overlap(slice_size: int, size: int) -> None:
    covered = 0
    for index in range(slice_count(size, slice_size)):
        first, last = slice_bounds(index, slice_size, size)
        assert first == covered and first % slice_size == 0
        assert last - first + 1 <= slice_size
        covered = last + 1
    assert covered == size


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        (0, 99, range(0, 1)),  # ends exactly on a boundary
        (0, 100, range(0, 2)),  # one past a boundary
        (99, 99, range(0, 1)),  # one before a boundary
        (100, 199, range(1, 2)),
        (50, 250, range(0, 3)),
    ],
)
def test_boundary_cases(first: int, last: int, expected: range) -> None:
    assert slices_for_range(first, last, 100) == expected


def test_out_of_object_slice_is_an_error() -> None:
    with pytest.raises(ValueError):
        slice_bounds(3, 100, 300)
    assert slice_bounds(2, 100, 250) == (200, 249)
    assert slice_count(0, 100) == 0
