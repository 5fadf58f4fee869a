"""RawDiskStore: the L2 tier over one preallocated file or block device.

See FORMAT.md for the on-disk format, the durability rules and the metric keys. This
class is a facade: the :class:`cache.protocol.Store` methods, opening and closing; the
work is done by parts with one job each, all sharing one :class:`~cache.rawdisk.core.Core`
(device, geometry, locks, I/O pool, counters):

* ``recovery.py``: open a device: superblocks, format, load a checkpoint, replay;
* ``tables.py``: the index and block map and the pure rules that apply a journal record
  to them (live and at replay);
* ``persistence.py``: the journal and checkpoints (what is durable when);
* ``reads.py``: look up, read and verify an extent;
* ``writes.py``: admit, compress, allocate, write, commit a put;
* ``purge.py``: delete, purge a prefix, clear;
* ``maintenance.py``: admission, eviction, expiry, the reaper and the background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from cache.protocol import PutRequest, SliceData, SliceLease
from cache.rawdisk.allocator import BlockMap, fragmentation_of
from cache.rawdisk.core import Core, now
from cache.rawdisk.device import Device
from cache.rawdisk.index import FLAG_BAD, Entry, Index
from cache.rawdisk.layout import KIND_META, KIND_SLICE, Geometry, Superblock
from cache.rawdisk.maintenance import Maintenance
from cache.rawdisk.persistence import Persistence
from cache.rawdisk.purge import Purger
from cache.rawdisk.reads import BAD, ReadPath
from cache.rawdisk.recovery import attach, examine
from cache.rawdisk.writes import DeleteLog, WritePath

if TYPE_CHECKING:
    from settings import RawDiskCacheSettings

_BAD = BAD  # read result: damaged record (the admin CLI checks for it)


class RawDiskStore:
    """The L2 store. Build it with :meth:`open`; implements :class:`cache.protocol.Store`."""

    name = "l2"

    def __init__(self, core: Core, persist: Persistence) -> None:
        self._core = core
        self._persistence = persist
        self._maint = Maintenance(core, persist)
        self._purger = Purger(core, persist, DeleteLog(), self._maint.reap_wanted.set)
        self._reads = ReadPath(core, self._maint.sketch, self._purger.drop_if_current)
        self._writes = WritePath(
            core,
            persist,
            self._purger.deletes,
            self._maint.admits,
            self._maint.evict_one,
            self._maint.wake,
        )
        self.max_payload = self._writes.max_payload

    # --- opening -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        settings: RawDiskCacheSettings,
        *,
        index_capacity: int | None = None,
        read_only: bool = False,
        warning_interval: float | None = None,
    ) -> RawDiskStore:
        """Create, format or load the device; raises :class:`RawDiskError` on any problem.

        ``index_capacity`` overrides the number of index entries a new format reserves room
        for (default: one per 32 KiB of device); the format on disk wins when loading.
        ``read_only``: inspect the device without writing to it (the admin CLI's info and
        verify); repairs found while loading are reported, not made.
        ``warning_interval``: seconds between two log lines of one kind of failure (failed
        reads and writes, records that fail verification, skipped checkpoints); the ones
        in between are counted into the next line.
        """
        store = await asyncio.to_thread(cls._open_sync, settings, index_capacity, read_only)
        if warning_interval is not None:
            store._core.warnings.interval = warning_interval
        store._maint.start()
        return store

    @classmethod
    def _open_sync(
        cls, settings: RawDiskCacheSettings, index_capacity: int | None, read_only: bool = False
    ) -> RawDiskStore:
        started = time.perf_counter()
        device = Device.open(settings.device_path, read_only=read_only)
        try:
            store = cls(*attach(settings, device, index_capacity))
        except BaseException:
            device.close()
            if device.created:
                with contextlib.suppress(OSError):
                    os.unlink(settings.device_path)
            raise
        store._core.stats["load_seconds"] = time.perf_counter() - started
        store._core.tables.defer_frees = True
        return store

    @classmethod
    def _inspect(cls, settings: RawDiskCacheSettings) -> RawDiskStore:
        """Load the device without writing a byte (the admin CLI's info and verify).

        Nothing is repaired and no background task runs; what a writable open would repair
        is listed in ``_problems``. Release it with ``_abandon()``.
        """
        started = time.perf_counter()
        device = Device.open(settings.device_path, read_only=True)
        try:
            store = cls(*attach(settings, device, None, read_only=True))
        except BaseException:
            device.close()
            raise
        store._core.stats["load_seconds"] = time.perf_counter() - started
        return store

    _examine = staticmethod(examine)  # the preflight check's read-only look

    # --- the Store protocol --------------------------------------------------------------

    async def get_slice(self, key: str, *, next_key: str | None = None) -> SliceData | None:
        """``next_key``, if stored, is prefetched (``enable_prefetch``)."""
        return await self._reads.get(key, KIND_SLICE, next_key)

    async def lease_slice(
        self, key: str, *, next_key: str | None = None, size_hint: int | None = None
    ) -> SliceLease | None:
        """The slice as a zero-copy view of the mapped device, its extent pinned until the
        lease is released (see reads.py); ``next_key`` as for :meth:`get_slice`."""
        return await self._reads.lease(key, KIND_SLICE, next_key)

    def slice_resident_now(self, key: str) -> bool:
        """Could :meth:`lease_slice_now` verify the slice here and now? Counts nothing."""
        return self._reads.resident_now(key, KIND_SLICE)

    def lease_slice_now(self, key: str) -> SliceLease | None:
        """:meth:`lease_slice` of a slice :meth:`slice_resident_now` has just found, with no
        await in between: synchronous, counted as lease_slice counts."""
        return self._reads.lease_now(key, KIND_SLICE)

    async def get_meta(self, key: str) -> bytes | None:
        data = await self._reads.get(key, KIND_META)
        if data is None:
            return None
        return bytes(data)

    def contains_slice(self, key: str) -> bool:
        """Whether a slice is indexed, for X-Cache (a damaged one still reads as a miss)."""
        return self._reads.contains_slice(key)

    async def put_slice(
        self,
        key: str,
        data: SliceData,
        expires_at: float | None,
        compressible: bool | None = None,
        *,
        epoch: int | None = None,  # the front's purge epoch: checked by TieredStore
    ) -> bool:
        """Store a slice. ``compressible=False`` says the content is already compressed."""
        request = PutRequest(key, data, expires_at, "slice", compressible)
        return (await self._writes.put_many([request]))[0]

    async def put_meta(
        self, key: str, meta: bytes, expires_at: float | None, *, epoch: int | None = None
    ) -> bool:
        request = PutRequest(key, meta, expires_at, "meta", False)
        return (await self._writes.put_many([request]))[0]

    async def put_many(self, requests: Sequence[PutRequest]) -> list[bool]:
        """Store a batch of slices and metadata blobs, crossing to the worker threads once
        or twice for the lot (WritePath.put_many)."""
        return await self._writes.put_many(requests)

    async def delete(self, object_key: str) -> int:
        return await self._purger.delete(object_key)

    async def delete_prefix(self, prefix: str) -> int:
        return await self._purger.delete_prefix(prefix)

    async def clear(self) -> int:
        return await self._purger.clear()

    def keys(self) -> Iterator[str]:
        index = self._core.tables.index
        now_s = now()
        items = list(index.live_keys_with_rows())
        for key, row in items:
            if index.flags_of(row) & FLAG_BAD:
                continue
            expires = index.expires_of(row)
            if expires and expires <= now_s:
                continue
            yield key.decode()

    def stats(self) -> dict[str, float]:
        core = self._core
        geo = core.geo
        index = core.tables.index
        block_map = core.tables.map
        largest_free_run = self._maint.largest_free_run
        out = dict(core.stats)
        used = block_map.used_blocks
        capacity = geo.data_blocks * geo.block_size
        out.update(
            entries=float(index.entries),
            bytes=float(index.live_bytes),
            stored_bytes=float(index.stored_bytes),
            capacity_bytes=float(capacity),
            device_bytes=float(geo.total_size),
            block_size=float(geo.block_size),
            total_blocks=float(geo.data_blocks),
            used_blocks=float(used),
            free_blocks=float(block_map.free_blocks),
            used_bytes=float(used * geo.block_size),
            usage_ratio=used / geo.data_blocks if geo.data_blocks else 0.0,
            max_entries=float(geo.max_entries),
            pending_reclaim_entries=float(index.dead),
            free_extents=float(self._maint.free_runs),
            largest_free_extent_bytes=float(largest_free_run * geo.block_size),
            fragmentation=min(
                1.0,
                max(
                    0.0,
                    fragmentation_of(
                        block_map.free_blocks, min(largest_free_run, block_map.free_blocks)
                    ),
                ),
            ),
            hit_ratio=(out["hits_total"] / out["lookups_total"]) if out["lookups_total"] else 0.0,
            compression_ratio=(
                index.live_bytes / index.stored_bytes if index.stored_bytes else 1.0
            ),
            index_bytes=float(index.memory_bytes() + len(block_map.map)),
            journal_fill_ratio=self._persistence.journal_fill(),
            readers_active=float(sum(core.tables.readers.values())),
            leases=float(self._reads.leases),
            direct_io=1.0 if core.device.direct_io else 0.0,
            format_generation=float(core.sb.generation),
        )
        return out

    async def close(self) -> None:
        core = self._core
        if core.closed:
            return
        core.closed = True
        for background in self._maint.background:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        if core.tasks:  # drops scheduled by reads: let them finish, briefly
            await asyncio.wait(list(core.tasks), timeout=1.0)
        for task in list(core.tasks):
            task.cancel()
        for task in list(core.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Wait for puts and reads in flight, then persist everything.
        async with core.mutate:
            pass
        persist = self._persistence
        try:
            if persist.records_since_ckpt or persist.buffered:
                await persist.checkpoint()
            await persist.sync()
        finally:
            core.pool.shutdown(wait=True)
            core.device.close()

    # --- beyond the protocol: durability, geometry -----------------------------------------

    async def sync(self) -> None:
        """Make every change so far durable: data, then the journal records naming it."""
        await self._persistence.sync()

    async def checkpoint(self) -> None:
        """Write the whole index to the next checkpoint slot and start a new journal epoch."""
        await self._persistence.checkpoint()

    @property
    def direct_io_reason(self) -> str:
        return self._core.device.direct_io_reason

    @property
    def geometry(self) -> Geometry:
        return self._core.geo

    # --- for the admin CLI and tests -----------------------------------------------------

    @property
    def _index(self) -> Index:
        return self._core.tables.index

    @property
    def _map(self) -> BlockMap:
        return self._core.tables.map

    @property
    def _device(self) -> Device:
        return self._core.device

    @property
    def _sb(self) -> Superblock:
        return self._core.sb

    @property
    def _format_id(self) -> int:
        return self._core.format_id

    @property
    def _problems(self) -> list[str]:
        return self._core.problems

    @property
    def _epoch(self) -> int:
        return self._persistence.epoch

    @property
    def _ckpt_seq(self) -> int:
        return self._persistence.ckpt_seq

    @property
    def _good_slot(self) -> int:
        return self._persistence.good_slot

    def _read_record(self, entry: Entry, kb: bytes) -> object:
        """Worker thread: read and verify one extent (payload or ``_BAD``)."""
        return self._reads.read_record(entry, kb)

    async def _drop_if_current(self, row: int, gen: int, counter: str | None) -> None:
        await self._purger.drop_if_current(row, gen, counter)

    async def _scan_fragmentation(self) -> None:
        await self._maint.scan_fragmentation()

    async def _compact_if_needed(self) -> None:
        await self._maint.compact_if_needed()

    async def _evict_if_needed(self) -> None:
        await self._maint.evict_if_needed()

    async def _drain(self) -> None:
        """Wait for background drops scheduled by reads (tests)."""
        while self._core.tasks:
            await asyncio.sleep(0.01)

    async def _reap_idle(self) -> None:
        """Wait until purged entries have all been reclaimed (tests and the CLI)."""
        core = self._core
        while core.tables.index.dead and not core.closed:
            self._maint.reap_wanted.set()
            await asyncio.sleep(0.01)

    async def _abandon(self) -> None:
        """Stop as a crash would: nothing more is written, the lock is released (tests)."""
        core = self._core
        core.closed = True
        tasks = [*core.tasks, *self._maint.background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        core.pool.shutdown(wait=True)
        core.device.close()
