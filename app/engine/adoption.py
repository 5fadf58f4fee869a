"""What the directory remembers of each object: adoption of a new version, invalidation.

:class:`ObjectRecords` holds the metadata of stored objects (read through from the store),
of objects shared in flight but too large to store, and the objects whose origin does not
serve ranges. :meth:`ObjectRecords.adopt` makes an origin answer the current version (the
old version's slices are retired once no response reads them); :meth:`forget` and its
siblings drop an object, its variants and slices from every tier (change, purge,
RFC 9111 4.4). A purge epoch travels with every adoption: a purge since the origin
request went out wins, whenever it lands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from app.edge.headers import Headers, end_to_end, get
from app.engine.objectmeta import NOT_STORED, ObjectMeta
from app.engine.slicer import SliceEngine
from app.httpcache.vary import selecting_headers, vary_field_names
from cache import keys
from cache.indexed import ObjectIndexedLRU
from cache.protocol import CacheFront

log = logging.getLogger("slicecache.objects")

# Key, entry and index bookkeeping a tier spends per slice (L1 counts ~256 B + the key).
PER_SLICE_OVERHEAD_BYTES = 1024
# How long an origin that ignored Range for a large object is not probed again.
UNSLICEABLE_MEMORY_SECONDS = 60.0


def entry_key_for(object_key: str, meta: ObjectMeta, request_headers: Headers) -> str:
    """The object's own key, or for a response with Vary the variant this request selects."""
    if not meta.vary:
        return object_key
    selecting = selecting_headers(tuple(meta.vary), request_headers)
    return keys.variant_key(object_key, selecting or [])


def meta_from(
    headers: Headers, size: int, request_time: float, response_time: float, whole: bool
) -> ObjectMeta:
    """The metadata an origin answer gives an object of ``size`` bytes."""
    vary = vary_field_names(headers)
    return ObjectMeta(
        size=size,
        etag=get(headers, "etag"),
        last_modified=get(headers, "last-modified"),
        # A whole object replays its own Content-Range (if a 200 had one); a sliced
        # one's belongs to the probe, not to the object.
        headers=end_to_end(headers, NOT_STORED - {"content-range"} if whole else NOT_STORED),
        request_time=request_time,
        response_time=response_time,
        vary=list(vary) if vary and vary != "*" else None,
        whole=whole,
    )


def withheld(meta: ObjectMeta, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Take the fields ``names`` out of ``meta``'s stored headers; returns what was taken."""
    if not names:
        return []
    drop = frozenset(names)
    taken = [(k, v) for k, v in meta.headers if k in drop]
    meta.headers = [(k, v) for k, v in meta.headers if k not in drop]
    return taken


@dataclass
class ObjectRecords:
    engine: SliceEngine
    store: CacheFront | None
    # Indexed by object (as are _unstored and the engine's recent slices): an invalidation
    # costs the object's own entries, not a scan.
    _metas: ObjectIndexedLRU[str, ObjectMeta] = field(
        default_factory=lambda: ObjectIndexedLRU(maxsize=4096)
    )
    # Indexed only for its change count (see ObjectIndexedLRU), which the fast path reads.
    _unsliceable: ObjectIndexedLRU[str, float] = field(
        default_factory=lambda: ObjectIndexedLRU(maxsize=4096)
    )
    # Metadata of objects shared in flight but too large to store: later clients join the
    # fills (and the engine's recent slices) instead of probing again.
    _unstored: ObjectIndexedLRU[str, ObjectMeta] = field(
        default_factory=lambda: ObjectIndexedLRU(maxsize=1024)
    )
    # Adopted metadata on its way to the store (see :meth:`_store_after_reply`): queued
    # writes, then the tasks writing them.
    _to_store: deque[tuple[tuple[str, ...], ObjectMeta, int]] = field(default_factory=deque)
    _storing: set[asyncio.Task[None]] = field(default_factory=set)

    # --- lookup --------------------------------------------------------------------------

    async def cached_meta(self, key: str) -> ObjectMeta | None:
        meta = self._metas.get(key)
        if meta is not None or self.store is None:
            return meta
        blob = await self.store.get_meta(key)
        if blob is None:
            return None
        try:
            meta = ObjectMeta.from_bytes(blob)
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable metadata dropped", extra={"fields": {"key": key}})
            await self.store.delete(key)
            return None
        self._metas[key] = meta
        return meta

    def known_meta(self, key: str) -> ObjectMeta | None:
        """What :meth:`cached_meta` answers without a store read (the fast path's lookup)."""
        return self._metas.get(key)

    def unstored(self, entry_key: str) -> ObjectMeta | None:
        return self._unstored.get(entry_key)

    def is_unsliceable(self, object_key: str) -> bool:
        until = self._unsliceable.get(object_key)
        return until is not None and until > time.time()

    def mark_unsliceable(self, object_key: str) -> None:
        """The origin ignores Range for this object (or its ranges cannot be trusted):
        pass it through for a while."""
        self._unsliceable[object_key] = time.time() + UNSLICEABLE_MEMORY_SECONDS

    # --- adoption ------------------------------------------------------------------------

    def too_large(self, size: int) -> bool:
        """Would the object, with each slice's bookkeeping, not fit in the tiers at all?

        An object a little larger than the cache is the worst case of LRU: every slice a
        sequential read inserts evicts the next one it is about to read.
        """
        if self.store is None:
            return False
        slices = size // self.engine.slice_size + 2
        return size + slices * PER_SLICE_OVERHEAD_BYTES > self.store.capacity_bytes

    def share_unstored(self, object_key: str, meta: ObjectMeta, request_headers: Headers) -> str:
        """Too large to store: remembered in memory only, so later clients join its fills."""
        entry_key = entry_key_for(object_key, meta, request_headers)
        self._unstored[entry_key] = meta
        return entry_key

    async def adopt(
        self, object_key: str, meta: ObjectMeta, request_headers: Headers, epoch: int
    ) -> str:
        """Store ``meta`` as the current version; returns the entry key it lives under.

        ``epoch``: the purge epoch of the origin request that brought ``meta``. A purge
        since then (even one that lands during the awaits here) wins: nothing is stored.
        """
        entry_key = entry_key_for(object_key, meta, request_headers)
        old = await self.cached_meta(entry_key)
        if old is not None and old.validator != meta.validator and self.store is not None:
            # A new version: the old one's slices are garbage once no response reads them
            # (a stale answer may still be sending them). Only they go: a purge of the
            # whole object would also cover this adoption's own writes.
            await self.engine.retire_version(entry_key, old.version)
        if self.engine.purged_since(epoch, entry_key):
            return entry_key  # purged since the request went out: the store refuses it too
        self._metas[entry_key] = meta
        stored_under: tuple[str, ...] = (entry_key,)
        if entry_key != object_key and not self.engine.purged_since(epoch, object_key):
            # The object's own key remembers what it varies on, for the next lookup.
            self._metas[object_key] = meta
            stored_under = (entry_key, object_key)
        if self.store is not None:
            self._store_after_reply(stored_under, meta, epoch)
        return entry_key

    def _store_after_reply(self, keys: tuple[str, ...], meta: ObjectMeta, epoch: int) -> None:
        """Write ``meta`` to the store under ``keys`` once the answer's head is out.

        The directory serves the adopted version from memory at once (``_metas``); the
        store's copy (encoding, L1's bytes, L2's queue: ~0.15 ms on a CPU that waited
        for the origin) is for later lookups and restarts, so a cold answer's first byte
        does not wait for it (issue 16). The request that waits for this probe wakes in
        the next turn of the loop and sends its head in it; the write starts in the turn
        after that. The store checks ``epoch`` when the write lands: a purge since the
        origin request went out still wins.
        """
        self._to_store.append((keys, meta, epoch))
        asyncio.get_running_loop().call_soon(self._start_store)

    def _start_store(self) -> None:
        if not self._to_store:
            return  # flushed by close()
        task = asyncio.get_running_loop().create_task(self._store(*self._to_store.popleft()))
        self._storing.add(task)
        task.add_done_callback(self._storing.discard)

    async def _store(self, keys: tuple[str, ...], meta: ObjectMeta, epoch: int) -> None:
        assert self.store is not None
        blob = meta.to_bytes()
        for key in keys:
            try:
                await self.store.put_meta(key, blob, None, epoch=epoch)
            except Exception as error:
                # Served from memory all the same; only a later lookup misses it.
                self.engine.counters.error("meta_store")
                self.engine.warnings.warning(
                    "meta_store", "metadata not stored", key=key, error=repr(error)
                )

    def storing(self) -> bool:
        """Adopted metadata is still on its way to the store."""
        return bool(self._to_store or self._storing)

    async def close(self) -> None:
        """Every adoption so far reaches the store before it closes."""
        while self._to_store:
            self._start_store()
        if self._storing:
            await asyncio.gather(*self._storing, return_exceptions=True)

    # --- invalidation --------------------------------------------------------------------

    async def forget(self, object_key: str) -> int:
        """Drop the object, its variants and slices from every tier (change, purge, 4.4)."""
        self._metas.pop_object(object_key)
        self._unstored.pop_object(object_key)
        self.engine.forget(object_key)
        self._unsliceable.pop(object_key, None)
        return await self.store.delete(object_key) if self.store is not None else 0

    async def object_changed(self, entry_key: str, version: str) -> None:
        """The origin no longer serves ``version`` of the entry: forget the object, unless
        what is stored is already a newer version (the change concerned only responses
        still reading the old one, e.g. stale ones; the new version stays)."""
        object_key = keys.object_key_of(entry_key)
        current = self._unstored.get(entry_key) or await self.cached_meta(entry_key)
        if current is not None and current.version != version:
            return
        await self.forget(object_key)

    async def forget_prefix(self, prefix: str) -> int:
        for cache in (self._metas, self._unstored):
            for key in [k for k in cache if k.startswith(prefix)]:
                cache.pop(key, None)
        self.engine.forget_prefix(prefix)
        for key in [k for k in self._unsliceable if k.startswith(prefix)]:
            self._unsliceable.pop(key, None)
        return await self.store.delete_prefix(prefix) if self.store is not None else 0

    async def forget_all(self) -> int:
        self._metas.clear()
        self._unstored.clear()
        self.engine.forget_all()
        self._unsliceable.clear()
        return await self.store.clear() if self.store is not None else 0
