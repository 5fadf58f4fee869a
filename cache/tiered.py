"""L1 over L2 behind the store protocol: promotion, write-behind, purge without resurrection.

Reads go to L1, then L2; an L2 hit is promoted to L1. Writes land in L1 at once and reach
L2 through a bounded queue drained by one background task: a full queue drops the L2
write (counted), it never blocks the client stream. An error in a tier is logged and
counted and degrades to the next tier; it never fails a request.

Purges must leave no window in which a purged entry comes back. Three places could bring
one back: a queued (or in-progress) L2 write of a purged key, a concurrent L2 read that
promotes into L1 after the purge, and a slice fetched from the origin before the purge
that is stored after it. Every purge is recorded with an epoch number; writes, reads and
fills carry the epoch they started in (:attr:`TieredStore.epoch`), and anything a later
purge matches is discarded (and deleted from L2 again if it was already written). The
last :data:`PURGE_RECORDS` purges are kept; an operation older than all of them is
treated as purged, which can only skip a store, never serve purged bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from cachetools import LRUCache

from cache.keys import SEPARATOR, belongs_to
from cache.memory import MemoryStore
from cache.protocol import SliceData, Store

log = logging.getLogger("slicecache.cache")

KeyMatcher = Callable[[str], bool]

PURGE_RECORDS = 1024  # prefix and all purges remembered
OBJECT_PURGE_RECORDS = 100_000  # object purges (PURGE of a URL, RFC 9111 4.4) remembered


@dataclass(slots=True)
class _Write:
    kind: str  # "slice" or "meta"
    key: str
    data: SliceData
    expires_at: float | None
    epoch: int


class TieredStore:
    name = "tiered"

    def __init__(self, l1: MemoryStore | None, l2: Store | None, queue_size: int = 64) -> None:
        self.l1 = l1
        self.l2 = l2
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(maxsize=max(queue_size, 1))
        # What the tiers can hold at most: a bigger object is streamed, never stored.
        self.capacity_bytes = int(
            (l1.capacity_bytes if l1 is not None else 0)
            + (l2.stats().get("capacity_bytes", 0) if l2 is not None else 0)
        )
        self._epoch = 0
        self._purges: deque[tuple[int, KeyMatcher]] = deque(maxlen=PURGE_RECORDS)
        # Object purges are the common kind (every successful POST/PUT/DELETE invalidates
        # its URL): kept apart, as object key -> epoch, so that write traffic cannot push
        # the records of an operation in flight out of memory.
        self._object_purges: LRUCache[str, int] = LRUCache(maxsize=OBJECT_PURGE_RECORDS)
        self._object_purges_forgotten = 0  # the newest epoch an evicted record had
        self._prefix_purges_forgotten = 0
        self._writer: asyncio.Task[None] | None = None
        # Slices queued for L2, readable until written: without L1 (or after an L1
        # eviction) a reader in that window would otherwise go back to the origin.
        self._pending: dict[str, SliceData] = {}
        self.counters = {
            "write_behind_dropped": 0,
            "write_behind_written": 0,
            "l2_errors": 0,
            "l1_promotions": 0,
            "stale_writes_discarded": 0,
            "slice_hits_l1": 0,
            "slice_hits_l2": 0,
        }

    # --- purge bookkeeping ---------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current purge epoch: remember it when an operation starts."""
        return self._epoch

    def purged_since(self, epoch: int, key: str) -> bool:
        """Did a purge since ``epoch`` cover ``key``? (Conservative past the kept records.)"""
        if epoch >= self._epoch:
            return False
        if self._object_purges.get(key.split(SEPARATOR, 1)[0], 0) > epoch:
            return True
        if self._object_purges_forgotten > epoch:
            return True  # an object purge since then was forgotten: assume it matched
        if self._prefix_purges_forgotten > epoch:
            return True  # a prefix purge since then was forgotten: assume it matched
        return any(when > epoch and matches(key) for when, matches in self._purges)

    def _drop_pending(self, matches: KeyMatcher) -> None:
        for key in [k for k in self._pending if matches(k)]:
            del self._pending[key]

    def _record_purge(self, matches: KeyMatcher) -> None:
        self._epoch += 1
        if len(self._purges) == PURGE_RECORDS:
            self._prefix_purges_forgotten = self._purges[0][0]
        self._purges.append((self._epoch, matches))
        self._drop_pending(matches)

    def _record_object_purge(self, object_key: str) -> None:
        self._epoch += 1
        if (
            len(self._object_purges) >= OBJECT_PURGE_RECORDS
            and object_key not in self._object_purges
        ):
            _, oldest = self._object_purges.popitem()
            self._object_purges_forgotten = max(self._object_purges_forgotten, oldest)
        self._object_purges[object_key] = self._epoch
        self._drop_pending(lambda key: belongs_to(key, object_key))

    # --- reads ---------------------------------------------------------------------------

    async def get_slice(self, key: str) -> SliceData | None:
        if self.l1 is not None:
            data = await self.l1.get_slice(key)
            if data is not None:
                self.counters["slice_hits_l1"] += 1
                return data
        if self.l2 is None:
            return None
        pending = self._pending.get(key)
        if pending is not None:
            self.counters["slice_hits_l1"] += 1
            return pending
        epoch = self._epoch
        try:
            data = await self.l2.get_slice(key)
        except Exception:
            self.counters["l2_errors"] += 1
            log.exception("L2 read failed; serving from the origin")
            return None
        if data is None or self.purged_since(epoch, key):
            return None
        self.counters["slice_hits_l2"] += 1
        if self.l1 is not None:
            # A tier hands out bytes nobody else writes to: promoted as they are, no copy.
            await self.l1.put_slice(key, data, None)
            self.counters["l1_promotions"] += 1
        return data

    async def get_meta(self, key: str) -> bytes | None:
        if self.l1 is not None:
            meta = await self.l1.get_meta(key)
            if meta is not None:
                return meta
        if self.l2 is None:
            return None
        epoch = self._epoch
        try:
            meta = await self.l2.get_meta(key)
        except Exception:
            self.counters["l2_errors"] += 1
            log.exception("L2 metadata read failed")
            return None
        if meta is None or self.purged_since(epoch, key):
            return None
        if self.l1 is not None:
            await self.l1.put_meta(key, meta, None)
        return meta

    def contains_slice(self, key: str) -> bool:
        if self.l1 is not None and self.l1.contains_slice(key):
            return True
        if key in self._pending:
            return True
        contains = getattr(self.l2, "contains_slice", None)
        return bool(contains(key)) if contains is not None else False

    # --- writes --------------------------------------------------------------------------

    async def put_slice(self, key: str, data: SliceData, expires_at: float | None) -> bool:
        stored = await self.l1.put_slice(key, data, expires_at) if self.l1 is not None else False
        return self._enqueue("slice", key, data, expires_at) or stored

    async def put_meta(self, key: str, meta: bytes, expires_at: float | None) -> bool:
        stored = await self.l1.put_meta(key, meta, expires_at) if self.l1 is not None else False
        return self._enqueue("meta", key, meta, expires_at) or stored

    def _enqueue(self, kind: str, key: str, data: SliceData, expires_at: float | None) -> bool:
        if self.l2 is None:
            return False
        self._ensure_writer()
        try:
            self._queue.put_nowait(_Write(kind, key, data, expires_at, self._epoch))
        except asyncio.QueueFull:
            self.counters["write_behind_dropped"] += 1
            return False
        if kind == "slice":
            self._pending[key] = data
        return True

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_behind())

    async def _write_behind(self) -> None:
        assert self.l2 is not None
        while True:
            item = await self._queue.get()
            try:
                if self.purged_since(item.epoch, item.key):
                    self.counters["stale_writes_discarded"] += 1
                    continue
                if item.kind == "slice":
                    await self.l2.put_slice(item.key, item.data, item.expires_at)
                else:
                    await self.l2.put_meta(item.key, bytes(item.data), item.expires_at)
                if self.purged_since(item.epoch, item.key):
                    # Purged while we were writing it: take it out again.
                    await self.l2.delete_prefix(item.key)
                    self.counters["stale_writes_discarded"] += 1
                else:
                    self.counters["write_behind_written"] += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["l2_errors"] += 1
                log.exception("L2 write failed; the slice stays in L1 only")
            finally:
                if item.kind == "slice" and self._pending.get(item.key) is item.data:
                    del self._pending[item.key]
                self._queue.task_done()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until queued L2 writes are done: used at shutdown and in tests."""
        if self.l2 is None or self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    # --- deletes -------------------------------------------------------------------------

    async def _in_every_tier(self, delete: Callable[[Store], Awaitable[int]]) -> int:
        removed = 0
        if self.l1 is not None:
            removed += await delete(self.l1)
        if self.l2 is not None:
            try:
                removed += await delete(self.l2)
            except Exception:
                self.counters["l2_errors"] += 1
                log.exception("L2 delete failed")
        return removed

    async def delete(self, object_key: str) -> int:
        self._record_object_purge(object_key)
        return await self._in_every_tier(lambda tier: tier.delete(object_key))

    async def delete_prefix(self, prefix: str) -> int:
        self._record_purge(lambda key: key.startswith(prefix))
        return await self._in_every_tier(lambda tier: tier.delete_prefix(prefix))

    async def clear(self) -> int:
        self._record_purge(lambda key: True)
        return await self._in_every_tier(lambda tier: tier.clear())

    # --- the rest ------------------------------------------------------------------------

    def keys(self) -> Iterator[str]:
        seen: set[str] = set()
        for tier in (self.l1, self.l2):
            if tier is None:
                continue
            for key in tier.keys():
                if key not in seen:
                    seen.add(key)
                    yield key

    def stats(self) -> dict[str, float]:
        figures: dict[str, float] = {f"tiered_{k}": float(v) for k, v in self.counters.items()}
        figures["tiered_write_behind_queue_depth"] = float(self._queue.qsize())
        for tier in (self.l1, self.l2):
            if tier is not None:
                figures.update({f"{tier.name}_{k}": v for k, v in tier.stats().items()})
        return figures

    async def close(self) -> None:
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self.l2 is not None:
            await self.l2.close()
        if self.l1 is not None:
            await self.l1.close()
