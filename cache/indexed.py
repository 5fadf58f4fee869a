"""An LRU that also knows each object's keys (see :mod:`cache.keys`).

Every successful POST/PUT/DELETE invalidates its URI (RFC 9111 4.4). A scan of a whole
cache per invalidation is 22 ms on the event loop at 100k L1 entries; with this index an
invalidation costs the object's own entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from cache.keys import belongs_to, object_key_of

K = TypeVar("K")
V = TypeVar("V")


class ChangeCount:
    """Every write and removal (evictions too) in any ObjectIndexedLRU: what was looked up
    in them still stands while ``count`` has not moved. The fast path (app/fasthit.py)
    answers a repeated hit from what it looked up, without looking again.

    An instance, not a class attribute of the LRU: assigning to a class attribute modifies
    the type, which throws away CPython's attribute caches and specialized calls for every
    instance of it. Once per write and eviction, that made each call on an LRU cost ~2x
    (3-4 us per evicted entry, 1.2-1.7 ms of the loop per 1 MiB put into an L1 full of
    small objects).
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


CHANGES = ChangeCount()


class ObjectIndexedLRU(LRUCache[K, V], Generic[K, V]):
    """``name_of`` maps a cache key to the key string it stands for (identity for str keys).
    Every write and removal counts in :data:`CHANGES`."""

    def __init__(
        self,
        maxsize: int,
        getsizeof: Callable[[V], int] | None = None,
        name_of: Callable[[K], str] | None = None,
    ) -> None:
        super().__init__(maxsize=maxsize, getsizeof=getsizeof)
        self._name_of: Callable[[Any], str] = name_of or (lambda key: key)
        # Each object's keys as a dict used as a set: a dict of untracked keys (strings,
        # tuples of strings) is left out of the cycle collector, a set never is (one object
        # per cached object for every full collection to walk, on the loop: helper-62).
        self._by_object: dict[str, dict[K, None]] = {}

    def __setitem__(self, key: K, value: V) -> None:
        CHANGES.count += 1
        super().__setitem__(key, value)
        self._by_object.setdefault(object_key_of(self._name_of(key)), {})[key] = None

    def __delitem__(self, key: K) -> None:
        # Evictions come here too (popitem -> pop -> del).
        CHANGES.count += 1
        super().__delitem__(key)
        owner = object_key_of(self._name_of(key))
        members = self._by_object.get(owner)
        if members is not None:
            members.pop(key, None)
            if not members:
                del self._by_object[owner]

    def clear(self) -> None:
        CHANGES.count += 1
        super().clear()
        self._by_object.clear()

    def keys_of(self, object_key: str, within: str | None = None) -> list[K]:
        """The keys held for ``object_key`` (and, with ``within``, starting with it)."""
        members = self._by_object.get(object_key_of(object_key), {})
        name_of = self._name_of
        return [
            key
            for key in members
            if belongs_to(name_of(key), object_key)
            and (within is None or name_of(key).startswith(within))
        ]

    def pop_object(self, object_key: str) -> int:
        """Drop every entry of ``object_key``; returns how many."""
        doomed = self.keys_of(object_key)
        for key in doomed:
            del self[key]
        return len(doomed)
