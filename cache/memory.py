"""L1: the in-memory tier, an LRU bounded in bytes (cachetools).

Sizes are counted honestly: a slice costs its bytes plus its key and a fixed per-entry
overhead, metadata blobs the same, so ``SLICECACHE_L1_CACHE_SIZE_BYTES`` bounds what the
tier really holds. cachetools is not thread-safe; every call happens on the event loop.
"""

from __future__ import annotations

import math
import mmap
import time
from collections.abc import Callable, Iterator, Sequence

from cache.indexed import ObjectIndexedLRU
from cache.protocol import PutRequest, SliceData, SliceLease, put_each

# Python object headers of the entry, its tuple key and the LRU's bookkeeping, measured
# with sys.getsizeof on CPython 3.11 and rounded up.
ENTRY_OVERHEAD_BYTES = 256

SLICE = "s"
META = "m"


# An entry: (bytes held, expiry instant or None, cost). A plain tuple of a bytearray or
# bytes and numbers is left out of the cycle collector (CPython untracks such tuples),
# where a dataclass, a memoryview and its managed buffer were three objects each full
# collection walked, on the event loop: with 40k small objects in L1 CPython's own
# collections stalled every request for ~200 ms (helper-62).
Held = bytes | bytearray | mmap.mmap | memoryview
_Entry = tuple[Held, float | None, int]


_WHOLE = (bytes, bytearray, mmap.mmap)  # what a view may stand for in an entry
_VIEWABLE = (bytes, memoryview)  # what a get hands out as it is held


def _held(data: SliceData) -> Held:
    """What a view shows, without the view when it shows all of its object."""
    if isinstance(data, memoryview):
        shown = data.obj
        if isinstance(shown, _WHOLE) and data.nbytes == len(shown):
            return shown
    return data


def _shown(held: Held) -> SliceData:
    return held if isinstance(held, _VIEWABLE) else memoryview(held)


class MemoryStore:
    """Slices and metadata in one byte-bounded LRU."""

    name = "l1"

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        # Indexed by object, so that invalidating one object costs its own entries.
        self._lru: ObjectIndexedLRU[tuple[str, str], _Entry] = ObjectIndexedLRU(
            max(capacity_bytes, 1), lambda entry: entry[2], name_of=lambda k: k[1]
        )
        self._time = time.time
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        self.expired = 0

    def _get(self, kind: str, key: str) -> SliceData | None:
        entry = self._lru.get((kind, key))
        if entry is None:
            self.misses += 1
            return None
        expires_at = entry[1]
        if expires_at is not None and expires_at <= self._time():
            del self._lru[(kind, key)]
            self.expired += 1
            self.misses += 1
            return None
        self.hits += 1
        return _shown(entry[0])

    def _put(self, kind: str, key: str, data: SliceData, expires_at: float | None) -> bool:
        cost = len(data) + len(key) + ENTRY_OVERHEAD_BYTES
        if cost > self._lru.maxsize or self.capacity_bytes == 0:
            self.rejected += 1
            return False
        self._lru[(kind, key)] = (_held(data), expires_at, cost)
        return True

    def _live(self, key: str) -> _Entry | None:
        """The slice's entry if held and unexpired; nothing counted, nothing dropped."""
        entry = self._lru.get((SLICE, key))
        if entry is None or (entry[1] is not None and entry[1] <= self._time()):
            return None
        return entry

    def contains_slice(self, key: str) -> bool:
        return self._live(key) is not None

    async def get_slice(self, key: str, *, next_key: str | None = None) -> SliceData | None:
        return self._get(SLICE, key)  # in memory already: nothing to prefetch

    async def lease_slice(
        self, key: str, *, next_key: str | None = None, size_hint: int | None = None
    ) -> SliceLease | None:
        """A lease over the bytes this tier holds anyway: nothing to pin, release is a no-op
        (an eviction only drops this tier's reference; the bytes live while viewed)."""
        data = self._get(SLICE, key)
        return SliceLease.of(data) if data is not None else None

    def held_slices_now(self, keys: list[str]) -> tuple[list[SliceData], float] | None:
        """The fast path's read: every one of the slices if all are held and unexpired,
        counted as hits as :meth:`get_slice` counts them, and the instant the first of
        them expires (inf: never); None, counted nowhere, if any is not held (the fast
        path then declines, and the normal path's reads count once)."""
        expires = math.inf
        found = []
        for key in keys:
            entry = self._live(key)
            if entry is None:
                return None
            if entry[1] is not None:
                expires = min(expires, entry[1])
            found.append(_shown(entry[0]))
        self.hits += len(found)
        return found, expires

    def get_slice_now(self, key: str) -> SliceData | None:
        """:meth:`get_slice`, synchronously: counted the same way."""
        return self._get(SLICE, key)

    def count_hits(self, count: int) -> None:
        """Hits the fast path served from slices it read here before, unchanged since."""
        self.hits += count

    # ``epoch``: the front (TieredStore) checks it against its purge records right before
    # calling, with no await in between; this tier keeps no records of its own.
    async def put_slice(
        self,
        key: str,
        data: SliceData,
        expires_at: float | None,
        *,
        epoch: int | None = None,
        compressible: bool | None = None,
    ) -> bool:
        return self._put(SLICE, key, data, expires_at)

    async def get_meta(self, key: str) -> bytes | None:
        data = self._get(META, key)
        return bytes(data) if data is not None else None

    async def put_meta(
        self, key: str, meta: bytes, expires_at: float | None, *, epoch: int | None = None
    ) -> bool:
        return self._put(META, key, meta, expires_at)

    async def put_many(self, requests: Sequence[PutRequest]) -> list[bool]:
        return await put_each(self, requests)

    def _remove_where(self, matches: Callable[[str], bool]) -> int:
        doomed = [k for k in self._lru if matches(k[1])]
        for k in doomed:
            del self._lru[k]
        return len(doomed)

    async def delete(self, object_key: str) -> int:
        return self._lru.pop_object(object_key)

    async def delete_prefix(self, prefix: str) -> int:
        return self._remove_where(lambda key: key.startswith(prefix))

    async def clear(self) -> int:
        count = len(self._lru)
        self._lru.clear()
        return count

    def keys(self) -> Iterator[str]:
        return (key for _, key in list(self._lru))

    def stats(self) -> dict[str, float]:
        return {
            "entries": float(len(self._lru)),
            "bytes": float(self._lru.currsize),
            "capacity_bytes": float(self.capacity_bytes),
            "hits": float(self.hits),
            "misses": float(self.misses),
            "rejected": float(self.rejected),
            "expired": float(self.expired),
        }

    async def close(self) -> None:
        self._lru.clear()
