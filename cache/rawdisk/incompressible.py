"""Objects whose slices did not compress: the next slices skip the zstd attempt.

A slice is compressed in a worker thread (a thread hop, and a 64 KiB sample at least)
only to learn, for media and archives, that it does not pay. Slices of one object are
alike: once one slice of an object was stored raw because zstd did not pay, its other
slices are stored raw without an attempt, but every :data:`RECHECK_EVERY`-th slice is
still tried, so an object whose later part compresses (a tar of text after a video) is
noticed and forgotten here. The stored format is unchanged: a record says its codec.
"""

from __future__ import annotations

from cachetools import LRUCache

# Objects remembered (an entry is a key prefix and a bool: ~200 bytes).
REMEMBERED_OBJECTS = 4096
# Of a remembered object's slices, those whose index is a multiple of this are still tried.
RECHECK_EVERY = 16


def _split(key: bytes) -> tuple[bytes, int | None]:
    """(the object version's key prefix, the slice index) of ``<entry> <version> <index>``."""
    prefix, _, tail = key.rpartition(b" ")
    return prefix, int(tail) if prefix and tail.isdigit() else None


class IncompressibleObjects:
    def __init__(self, size: int = REMEMBERED_OBJECTS) -> None:
        self._objects: LRUCache[bytes, bool] = LRUCache(maxsize=size)

    def worth_trying(self, key: bytes) -> bool:
        """Should this slice's payload go through a zstd attempt?"""
        prefix, index = _split(key)
        if index is None or prefix not in self._objects:
            return True
        return index % RECHECK_EVERY == 0

    def tried(self, key: bytes, paid: bool) -> None:
        """The outcome of an attempt on this slice."""
        prefix, index = _split(key)
        if index is None:
            return
        if paid:
            self._objects.pop(prefix, None)
        else:
            self._objects[prefix] = True
