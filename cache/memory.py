"""L1: the in-memory tier, an LRU bounded in bytes (cachetools).

Sizes are counted honestly: a slice costs its bytes plus its key and a fixed per-entry
overhead, metadata blobs the same, so ``SLICECACHE_L1_CACHE_SIZE_BYTES`` bounds what the
tier really holds. cachetools is not thread-safe; every call happens on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cachetools import LRUCache

from cache.keys import SEPARATOR, belongs_to
from cache.protocol import SliceData

# Python object headers of the entry, its tuple key and the LRU's bookkeeping, measured
# with sys.getsizeof on CPython 3.11 and rounded up.
ENTRY_OVERHEAD_BYTES = 256

SLICE = "s"
META = "m"


class _IndexedLRU(LRUCache[tuple[str, str], "_Entry"]):
    """An LRU that also knows each object's entries, so that invalidating one object (every
    successful POST/PUT/DELETE does, RFC 9111 4.4) costs its own entries, not a scan of
    the whole cache (22 ms at 100k entries, on the event loop)."""

    def __init__(self, maxsize: int, getsizeof: Callable[[_Entry], int]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=getsizeof)
        self.by_object: dict[str, set[tuple[str, str]]] = {}

    def __setitem__(self, key: tuple[str, str], value: _Entry) -> None:
        super().__setitem__(key, value)
        self.by_object.setdefault(object_of(key[1]), set()).add(key)

    def __delitem__(self, key: tuple[str, str]) -> None:
        # Evictions come here too (popitem -> pop -> del).
        super().__delitem__(key)
        owner = object_of(key[1])
        entries = self.by_object.get(owner)
        if entries is not None:
            entries.discard(key)
            if not entries:
                del self.by_object[owner]

    def clear(self) -> None:
        super().clear()
        self.by_object.clear()


def object_of(key: str) -> str:
    """The object key a slice, variant or metadata key belongs to (see cache.keys)."""
    return key.split(SEPARATOR, 1)[0]


@dataclass(slots=True)
class _Entry:
    data: SliceData
    expires_at: float | None
    cost: int


class MemoryStore:
    """Slices and metadata in one byte-bounded LRU."""

    name = "l1"

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._lru = _IndexedLRU(max(capacity_bytes, 1), lambda entry: entry.cost)
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
        if entry.expires_at is not None and entry.expires_at <= self._time():
            del self._lru[(kind, key)]
            self.expired += 1
            self.misses += 1
            return None
        self.hits += 1
        return entry.data

    def _put(self, kind: str, key: str, data: SliceData, expires_at: float | None) -> bool:
        cost = len(data) + len(key) + ENTRY_OVERHEAD_BYTES
        if cost > self._lru.maxsize or self.capacity_bytes == 0:
            self.rejected += 1
            return False
        self._lru[(kind, key)] = _Entry(data, expires_at, cost)
        return True

    def contains_slice(self, key: str) -> bool:
        entry = self._lru.get((SLICE, key))
        return entry is not None and (entry.expires_at is None or entry.expires_at > self._time())

    async def get_slice(self, key: str) -> SliceData | None:
        return self._get(SLICE, key)

    # ``epoch``: the front (TieredStore) checks it against its purge records right before
    # calling, with no await in between; this tier keeps no records of its own.
    async def put_slice(
        self, key: str, data: SliceData, expires_at: float | None, *, epoch: int | None = None
    ) -> bool:
        return self._put(SLICE, key, data, expires_at)

    async def get_meta(self, key: str) -> bytes | None:
        data = self._get(META, key)
        return bytes(data) if data is not None else None

    async def put_meta(
        self, key: str, meta: bytes, expires_at: float | None, *, epoch: int | None = None
    ) -> bool:
        return self._put(META, key, meta, expires_at)

    def _remove_where(self, matches: Callable[[str], bool]) -> int:
        doomed = [k for k in self._lru if matches(k[1])]
        for k in doomed:
            del self._lru[k]
        return len(doomed)

    async def delete(self, object_key: str) -> int:
        owner = object_of(object_key)
        candidates = list(self._lru.by_object.get(owner, ()))
        doomed = [k for k in candidates if belongs_to(k[1], object_key)]
        for k in doomed:
            del self._lru[k]
        return len(doomed)

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
