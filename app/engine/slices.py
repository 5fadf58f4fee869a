"""Slice arithmetic: pure functions mapping byte ranges to fixed-size, aligned slices.

Slice ``i`` of an object of ``size`` bytes covers bytes ``i*S .. min((i+1)*S, size) - 1``;
alignment to multiples of ``S`` is what lets a full download, a seek and a resumed download
share cache entries.
"""

from __future__ import annotations


def slice_count(size: int, slice_size: int) -> int:
    """Slices of an object; a 0-byte object has none."""
    return -(-size // slice_size)


def slice_bounds(index: int, slice_size: int, size: int) -> tuple[int, int]:
    """Inclusive first and last byte of slice ``index``."""
    first = index * slice_size
    if index < 0 or first >= size:
        raise ValueError(f"slice {index} is outside an object of {size} bytes")
    return first, min(first + slice_size, size) - 1


def slices_for_range(first: int, last: int, slice_size: int) -> range:
    """Indexes of the slices that hold bytes ``first..last`` (inclusive)."""
    if first < 0 or last < first:
        raise ValueError(f"bad byte range {first}-{last}")
    return range(first // slice_size, last // slice_size + 1)


def clip(index: int, slice_size: int, size: int, first: int, last: int) -> tuple[int, int]:
    """The part of slice ``index`` inside bytes ``first..last``, as offsets into the slice."""
    start, end = slice_bounds(index, slice_size, size)
    lo = max(start, first) - start
    hi = min(end, last) - start + 1
    if lo >= hi:
        raise ValueError(f"slice {index} does not overlap {first}-{last}")
    return lo, hi
