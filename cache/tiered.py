"""L1 over L2 behind the store protocol: promotion, write-behind, purge without resurrection.

Reads go to L1, then L2; an L2 hit is promoted to L1. Writes land in L1 at once and reach
L2 through a bounded queue drained by one background task: a full queue drops the L2
write (counted), it never blocks the client stream. An error in a tier is logged and
counted and degrades to the next tier; it never fails a request.

Purges must leave no window in which a purged entry comes back. One mechanism owns
that: the purge epoch. Every purge is recorded with an epoch number; a fetch takes
:attr:`TieredStore.epoch` when its origin request goes out, and every write of what it
fetched carries that epoch (``put_slice``/``put_meta`` ``epoch=``) into every tier: L1
refuses it at once, the write-behind queue keeps it with the write and checks it before
(and after) the L2 write, and a read promoting from L2 to L1 carries the epoch of the
read. Anything a later purge matches is discarded (and deleted from L2 again if it was
already written). The last :data:`PURGE_RECORDS` purges are kept; an operation older than
all of them is treated as purged, which can only skip a store, never serve purged bytes.

L2 writes slow fills down rather than vanish: a write that finds the queue full waits
for room (the fill that produced it waits with it: backpressure on the fetch-ahead, never
on a reader of cached bytes). Only an L2 that makes no progress for
:data:`WRITE_BEHIND_WAIT_SECONDS` costs drops: counted here, visible in /stats and the
metrics, and logged once per warning interval by the app's pressure watch
(app/engine/pressure.py).

Writes reach L2 in batches: what is queued when the writer wakes goes to the tier at once
(:meth:`cache.protocol.Store.put_many`), so L2's worker threads are crossed once per batch.

Length (~505 lines): reads, writes, the write-behind queue and deletes all apply the one
purge-epoch rule above; kept in one module so that rule is read and changed in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from cachetools import LRUCache

from cache.keys import belongs_to, object_key_of
from cache.memory import MemoryStore
from cache.protocol import LeasesNow, PutRequest, SliceData, SliceLease, Store, put_each
from cache.ratelimit import DEFAULT_INTERVAL, RateLimitedLog

log = logging.getLogger("slicecache.cache")

KeyMatcher = Callable[[str], bool]

PURGE_RECORDS = 1024  # prefix and all purges remembered
OBJECT_PURGE_RECORDS = 100_000  # object purges (PURGE of a URL, RFC 9111 4.4) remembered
# How long a write waits for room in a full write-behind queue before it is dropped. An L2
# that drains nothing for that long is stuck: later writes drop at once until it writes.
WRITE_BEHIND_WAIT_SECONDS = 5.0
# The most writes, and about the most bytes, handed to L2 at once (put_many): a small
# write costs less than a crossing to L2's worker threads; a batch of 1 MiB slices is cut
# short so that each commit still follows its write soon.
WRITE_BATCH = 64
WRITE_BATCH_BYTES = 8 << 20
# An L2 hit leased by a response (zero-copy) is promoted into L1 only when its whole object
# is at most this share of L1. Promotion is a copy per hit; the L2 lease path costs the
# same copy's order (an xxh3 pass at ~29 GB/s and a thread hop) and no memory. Promoting
# every hit of a 1 GiB object through a 100 MiB L1 evicted each promoted slice before it
# was read again (clients spread over the object) and pushed the small hot objects out:
# 64 x 1 GiB from L2 held ~370 MiB of anonymous memory and spent 0.5-1.0 CPU-s per GB.
PROMOTE_OBJECT_SHARE = 8  # an object up to 1/8 of L1 (12.5 MiB of the default 100 MiB)


@dataclass(slots=True)
class _Write:
    kind: Literal["slice", "meta"]
    key: str
    data: SliceData
    expires_at: float | None
    epoch: int
    compressible: bool | None = None  # False: already compressed, L2 makes no attempt


class TieredStore:
    name = "tiered"

    def __init__(
        self,
        l1: MemoryStore | None,
        l2: Store | None,
        queue_size: int = 64,
        warning_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(maxsize=max(queue_size, 1))
        # L2, if it can answer the fast path's synchronous reads (lease_slice_now).
        self._l2_now = l2 if isinstance(l2, LeasesNow) else None
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
        # Purges recorded whose deletes still run: L2's may wait for its locks (a sync
        # holds them for an fdatasync), and until it runs L2 still answers what it covers.
        self._purges_running: list[KeyMatcher] = []
        self._writer: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()  # waits for queue room (_enqueue)
        # Slices queued for L2, readable until written: without L1 (or after an L1
        # eviction) a reader in that window would otherwise go back to the origin.
        self._pending: dict[str, SliceData] = {}
        self._l2_stuck = False  # a wait for queue room timed out; cleared by the next write
        # Failures and drops: one line per kind per interval, the rest counted into it.
        self.warnings = RateLimitedLog(log, warning_interval)
        self.counters = {
            "write_behind_dropped": 0,
            "write_behind_written": 0,
            "l2_declined": 0,  # writes L2 turned down (its own stats say why)
            "l2_errors": 0,
            "l1_promotions": 0,
            "stale_writes_discarded": 0,
            "stale_reads_discarded": 0,  # L2 answers a purge covered (_read_purged)
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
        if self._object_purges.get(object_key_of(key), 0) > epoch:
            return True
        if self._object_purges_forgotten > epoch:
            return True  # an object purge since then was forgotten: assume it matched
        if self._prefix_purges_forgotten > epoch:
            return True  # a prefix purge since then was forgotten: assume it matched
        return any(when > epoch and matches(key) for when, matches in self._purges)

    def _read_purged(self, epoch: int, key: str) -> bool:
        """Is what a tier answered for ``key``, asked at ``epoch``, purged? Purged since, or
        covered by a purge still running: a read that starts after the purge was recorded
        but before L2's delete ran finds the old entry there (helper-64: after a PURGE with
        X-Purge-All was answered, the old version came back from L2 into L1, ~1 in 15
        purges with L2 busy writing)."""
        if self.purged_since(epoch, key) or any(m(key) for m in self._purges_running):
            self.counters["stale_reads_discarded"] += 1
            return True
        return False

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

    async def get_slice(self, key: str, *, next_key: str | None = None) -> SliceData | None:
        if self.l1 is not None:
            data = await self.l1.get_slice(key, next_key=next_key)
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
            data = await self.l2.get_slice(key, next_key=next_key)
        except Exception:
            self._l2_read_failed()
            return None
        if data is None or self._read_purged(epoch, key):
            return None
        self.counters["slice_hits_l2"] += 1
        if self.l1 is not None:
            # A tier hands out bytes nobody else writes to: promoted as they are, no copy.
            await self.l1.put_slice(key, data, None, epoch=epoch)
            self.counters["l1_promotions"] += 1
        return data

    async def lease_slice(
        self, key: str, *, next_key: str | None = None, size_hint: int | None = None
    ) -> SliceLease | None:
        """Like :meth:`get_slice`, without a copy: an L2 hit comes as the L2's lease (the
        caller releases it); L1 and pending bytes as no-op leases. ``size_hint`` (the whole
        object's size) decides promotion: see :data:`PROMOTE_OBJECT_SHARE`."""
        if self.l1 is not None:
            data = await self.l1.get_slice(key, next_key=next_key)
            if data is not None:
                self.counters["slice_hits_l1"] += 1
                return SliceLease.of(data)
        if self.l2 is None:
            return None
        pending = self._pending.get(key)
        if pending is not None:
            self.counters["slice_hits_l1"] += 1
            return SliceLease.of(pending)
        epoch = self._epoch
        try:
            lease = await self.l2.lease_slice(key, next_key=next_key, size_hint=size_hint)
        except Exception:
            self._l2_read_failed()
            return None
        if lease is None:
            return None
        if self._read_purged(epoch, key):
            lease.release()
            return None
        self.counters["slice_hits_l2"] += 1
        l1 = self.l1
        if l1 is not None and (
            size_hint is None or size_hint * PROMOTE_OBJECT_SHARE <= l1.capacity_bytes
        ):
            data = bytes(lease.view) if lease.pinned else lease.view
            try:
                await l1.put_slice(key, data, None, epoch=epoch)
            except BaseException:  # cancelled: nobody will receive the lease to release it
                lease.release()
                raise
            self.counters["l1_promotions"] += 1
        return lease

    def lease_slice_now(self, key: str, size_hint: int) -> SliceLease | None:
        """The fast path's read of a slice only L2 holds (app/fasthit.py): what
        :meth:`lease_slice` would answer, here and now, counted as it counts, when that
        costs no I/O and promotes nothing. None, counted nowhere, when it would not be
        that (then the normal path reads it).

        ``size_hint``: the object's size (a slice of an object promotion would copy into L1
        is left to the normal path, which promotes it)."""
        l1, l2 = self.l1, self._l2_now
        if (
            l1 is None
            or l2 is None
            or size_hint * PROMOTE_OBJECT_SHARE <= l1.capacity_bytes
            or self._purges_running  # a purge whose L2 deletes still run may cover it
            or key in self._pending
            or l1.contains_slice(key)
            or not l2.slice_resident_now(key)
        ):
            return None
        # From here on this is lease_slice, without an await: the L1 miss is counted,
        # and no purge can be recorded between the read and its use (_read_purged).
        l1.get_slice_now(key)
        try:
            lease = l2.lease_slice_now(key)
        except Exception:
            self._l2_read_failed()
            return None
        if lease is not None:
            self.counters["slice_hits_l2"] += 1
        return lease

    def _l2_read_failed(self) -> None:
        self.counters["l2_errors"] += 1
        self.warnings.exception("l2_read_error", "L2 read failed; serving from the origin")

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
            self.warnings.exception("l2_meta_read_error", "L2 metadata read failed")
            return None
        if meta is None or self._read_purged(epoch, key):
            return None
        if self.l1 is not None:
            await self.l1.put_meta(key, meta, None, epoch=epoch)
        return meta

    def contains_slice(self, key: str) -> bool:
        if self.l1 is not None and self.l1.contains_slice(key):
            return True
        if key in self._pending:
            return True
        contains = getattr(self.l2, "contains_slice", None)
        return bool(contains(key)) if contains is not None else False

    # --- writes --------------------------------------------------------------------------

    async def put_slice(
        self,
        key: str,
        data: SliceData,
        expires_at: float | None,
        *,
        epoch: int | None = None,
        compressible: bool | None = None,
    ) -> bool:
        """Store a slice fetched by an origin request that went out at purge ``epoch``
        (None: now). A purge since then that covers ``key`` makes this a no-op."""
        epoch = self._epoch if epoch is None else epoch
        return await self._put(_Write("slice", key, data, expires_at, epoch, compressible))

    async def put_meta(
        self, key: str, meta: bytes, expires_at: float | None, *, epoch: int | None = None
    ) -> bool:
        epoch = self._epoch if epoch is None else epoch
        return await self._put(_Write("meta", key, meta, expires_at, epoch))

    async def put_many(self, requests: Sequence[PutRequest]) -> list[bool]:
        return await put_each(self, requests)  # each with the current purge epoch

    async def _put(self, write: _Write) -> bool:
        if self.purged_since(write.epoch, write.key):
            self.counters["stale_writes_discarded"] += 1
            return False
        stored = False
        if self.l1 is not None:
            if write.kind == "slice":
                stored = await self.l1.put_slice(write.key, write.data, write.expires_at)
            else:
                stored = await self.l1.put_meta(write.key, bytes(write.data), write.expires_at)
        return await self._enqueue(write) or stored

    async def _enqueue(self, write: _Write) -> bool:
        if self.l2 is None:
            return False
        self._ensure_writer()
        try:
            self._queue.put_nowait(write)
        except asyncio.QueueFull:
            if self._l2_stuck:
                return self._dropped()
            # The caller (a fill) waits: fetching ahead faster than L2 writes only turns
            # into lost writes and, later, origin requests again. The wait is the store's
            # own task: a caller cancelled meanwhile (a fill at shutdown, whose bytes are
            # all in) leaves its write to land when there is room; close() waits for it.
            waiting = asyncio.get_running_loop().create_task(self._queue.put(write))
            self._late.add(waiting)
            waiting.add_done_callback(self._late.discard)
            try:
                async with asyncio.timeout(WRITE_BEHIND_WAIT_SECONDS):
                    await asyncio.shield(waiting)
            except TimeoutError:
                waiting.cancel()
                self._l2_stuck = True
                return self._dropped()
            if self.purged_since(write.epoch, write.key):
                return False  # purged while we waited: the writer discards it
        if write.kind == "slice":
            self._pending[write.key] = write.data
        return True

    def _dropped(self) -> bool:
        self.counters["write_behind_dropped"] += 1
        return False

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_behind())

    async def _write_behind(self) -> None:
        assert self.l2 is not None
        while True:
            batch = [await self._queue.get()]
            try:
                # Behind whatever is ready: the request that queued this write is usually on
                # its way to its client, and an L2 index update must not go first.
                await asyncio.sleep(0)
                # What was queued meanwhile goes with it: one crossing to L2's threads
                # for the lot (put_many), not one or two per write.
                size = len(batch[0].data)
                while (
                    len(batch) < WRITE_BATCH
                    and size < WRITE_BATCH_BYTES
                    and not self._queue.empty()
                ):
                    batch.append(self._queue.get_nowait())
                    size += len(batch[-1].data)
                await self._write_batch(batch)
            except asyncio.CancelledError:
                # Cut short (close() gave up on a stuck L2): not written, as far as we know.
                self.counters["write_behind_dropped"] += len(batch)
                raise
            finally:
                for item in batch:
                    if item.kind == "slice" and self._pending.get(item.key) is item.data:
                        del self._pending[item.key]
                    self._queue.task_done()

    async def _write_batch(self, batch: list[_Write]) -> None:
        assert self.l2 is not None
        live = []
        for item in batch:
            if self.purged_since(item.epoch, item.key):
                self.counters["stale_writes_discarded"] += 1
            else:
                live.append(item)
        if not live:
            return
        try:
            accepted = await self._put_l2(live)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counters["l2_errors"] += len(live)
            self.warnings.exception("l2_write_error", "L2 write failed; the slice stays in L1 only")
            return
        for item, stored in zip(live, accepted, strict=True):
            if not stored:
                self.counters["l2_declined"] += 1  # L2 said no (space, admission...)
            elif self.purged_since(item.epoch, item.key):
                # Purged while we were writing it: take it out again.
                await self.l2.delete_prefix(item.key)
                self.counters["stale_writes_discarded"] += 1
            else:
                self.counters["write_behind_written"] += 1
        self._l2_stuck = False

    async def _put_l2(self, items: list[_Write]) -> list[bool]:
        assert self.l2 is not None
        return await self.l2.put_many(
            [
                PutRequest(
                    item.key,
                    item.data if item.kind == "slice" else bytes(item.data),
                    item.expires_at,
                    item.kind,
                    item.compressible if item.kind == "slice" else False,
                )
                for item in items
            ]
        )

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
                self.warnings.exception("l2_delete_error", "L2 delete failed")
        return removed

    async def _purge(self, matches: KeyMatcher, delete: Callable[[Store], Awaitable[int]]) -> int:
        self._purges_running.append(matches)
        try:
            return await self._in_every_tier(delete)
        finally:
            self._purges_running.remove(matches)

    async def delete(self, object_key: str) -> int:
        self._record_object_purge(object_key)
        return await self._purge(
            lambda key: belongs_to(key, object_key), lambda tier: tier.delete(object_key)
        )

    async def delete_prefix(self, prefix: str) -> int:
        def matches(key: str) -> bool:
            return key.startswith(prefix)

        self._record_purge(matches)
        return await self._purge(matches, lambda tier: tier.delete_prefix(prefix))

    async def clear(self) -> int:
        def matches(key: str) -> bool:
            return True

        self._record_purge(matches)
        return await self._purge(matches, lambda tier: tier.clear())

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
        if self._late:
            # Writes still waiting for room whose callers left: queued, or counted lost.
            _, stuck = await asyncio.wait(list(self._late), timeout=WRITE_BEHIND_WAIT_SECONDS)
            for task in stuck:
                task.cancel()
                self._dropped()
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self.counters["write_behind_dropped"] += self._queue.qsize()  # never written
        if self.l2 is not None:
            await self.l2.close()
        if self.l1 is not None:
            await self.l1.close()
