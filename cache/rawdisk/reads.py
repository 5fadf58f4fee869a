"""The read path: look a key up, verify its extent in a worker thread, serve.

Two ways to read, with the same checks: the record header against the index, the
payload's xxh3, and after the read that the entry is still the same generation, so a
deleted or recycled extent is never served (its blocks stay HELD while the read runs:
:meth:`Tables.begin_read`).

* :meth:`ReadPath.lease` (slices): no copy. The worker thread asks the kernel to read the
  extent in (``madvise(MADV_WILLNEED)``) and checksums it through the device's read-only
  mapping, so every page is resident before the event loop touches it (no page fault of a
  cold page stalls the loop). The extent stays HELD until the lease is released: a purge,
  delete, eviction or overwrite makes the key invisible at once, and its blocks become
  allocatable only when the last lease on them goes. A compressed record (the compressible
  minority) decodes into a private buffer and releases its extent at once.
  :meth:`ReadPath.lease_now` is the same read of a record :meth:`ReadPath.resident_now`
  has found resident, made synchronously (the fast path's: app/fasthit.py).
* :meth:`ReadPath.get` (metadata, the old ``get_slice``): ``pread`` into a private copy.
"""

from __future__ import annotations

import functools
import mmap
from collections.abc import Callable, Coroutine
from typing import Any

from cache.protocol import SliceData, SliceLease
from cache.rawdisk import codec
from cache.rawdisk.core import Core, now
from cache.rawdisk.index import FLAG_BAD, Entry, Index
from cache.rawdisk.layout import (
    CODEC_RAW,
    KIND_SLICE,
    RECORD_HEADER_SIZE,
    key_hash,
    unpack_record_header,
)
from cache.rawdisk.policy import CountMinSketch
from cache.rawdisk.residency import Residency

BAD = object()  # read result: damaged record
READ_FAILURES = (OSError, RuntimeError, ValueError)  # of a read: counted, a miss
PAGE = mmap.PAGESIZE

# Drop a row if it is still that generation; bumps the named counter.
DropIfCurrent = Callable[[int, int, str | None], Coroutine[Any, Any, None]]


class ReadPath:
    def __init__(self, core: Core, sketch: CountMinSketch, drop_if_current: DropIfCurrent) -> None:
        self.core = core
        self.tables = core.tables
        self._sketch = sketch  # every lookup counts towards admission
        self._drop_if_current = drop_if_current
        self._prefetch = core.settings.enable_prefetch
        self.leases = 0  # leases not yet released (stats: ``leases``)
        self._residency: Residency | None = None  # of the device mapping, made on first use

    def contains_slice(self, key: str) -> bool:
        """Whether a slice is indexed, for X-Cache (a damaged one still reads as a miss)."""
        return self._visible(key.encode(), KIND_SLICE) is not None

    def _visible(self, kb: bytes, kind: int) -> Entry | None:
        """The visible, unexpired entry of ``kb`` of ``kind``, not being purged: a quiet
        lookup (nothing counted, nothing dropped)."""
        index = self.tables.index
        row = index.find(kb, key_hash(kb))
        if row < 0 or not index.is_visible(row):
            return None
        entry = index.entry(row)
        if entry.kind != kind or (entry.expires and entry.expires <= now()):
            return None
        return None if self.core.purging(kb) else entry

    def resident_now(self, key: str, kind: int) -> bool:
        """Would :meth:`lease` of ``key`` find it and verify it here, on the event loop,
        without a worker thread (stored raw, every page in memory)? Counts nothing."""
        mapped = self._mapping()
        if mapped is None:
            return False
        kb = key.encode()
        entry = self._visible(kb, kind)
        return entry is not None and self._resident(mapped, entry, kb)

    async def get(self, key: str, kind: int, next_key: str | None = None) -> SliceData | None:
        """``next_key``: what the caller expects to ask for next, prefetched if stored."""
        found = self._find(key, kind)
        if found is None:
            return None
        row, entry, now_s = found
        kb = key.encode()
        tables = self.tables
        index = tables.index
        tables.begin_read(entry.start, entry.nblocks)
        try:
            result = await self._run_read(key, self.read_record, entry, kb, next_key)
        finally:
            tables.end_read(entry.start)
        if not self._accepted(result, key, kb, index, row, entry, now_s):
            return None
        assert isinstance(result, (bytes, memoryview))
        return result

    async def lease(self, key: str, kind: int, next_key: str | None = None) -> SliceLease | None:
        """``key``'s bytes as a zero-copy view of the device mapping, pinned until released.

        Falls back to :meth:`get` (a private copy under a no-op lease) when the device is
        not mapped (closed)."""
        mapped = self._mapping()
        if mapped is None:
            data = await self.get(key, kind, next_key)
            return SliceLease.of(data) if data is not None else None
        found = self._find(key, kind)
        if found is None:
            return None
        kb = key.encode()
        entry = found[1]
        if self._resident(mapped, entry, kb):
            # Nothing to read in: verified here, without the worker thread's hop.
            return self._lease_here(mapped, key, kb, found)
        index = self.tables.index
        unpin = self._pin(entry)
        try:
            read = functools.partial(self.map_record, mapped)
            result = await self._run_read(key, read, entry, kb, next_key)
        except BaseException:  # cancelled mid-read: the lease never reaches anyone
            unpin()
            raise
        return self._leased(result, key, kb, index, *found, unpin)

    def lease_now(self, key: str, kind: int) -> SliceLease | None:
        """:meth:`lease` of a record :meth:`resident_now` has just found resident, with no
        await since: verified here, counted as :meth:`lease` counts it. None when it is
        not there after all or fails verification (counted and dropped, as by lease)."""
        mapped = self._mapping()
        found = None if mapped is None else self._find(key, kind)
        if mapped is None or found is None:
            return None
        return self._lease_here(mapped, key, key.encode(), found)

    def _lease_here(
        self, mapped: mmap.mmap, key: str, kb: bytes, found: tuple[int, Entry, int]
    ) -> SliceLease | None:
        """The lease of a resident record (``found`` by :meth:`_find`), verified on this
        thread: no await between the lookup and the pin."""
        entry = found[1]
        index = self.tables.index
        unpin = self._pin(entry)
        try:
            result = self._read_resident(key, functools.partial(self.map_record, mapped), entry, kb)
        except BaseException:
            unpin()
            raise
        return self._leased(result, key, kb, index, *found, unpin)

    def _mapping(self) -> mmap.mmap | None:
        """The device's read-only mapping; None once the store is closed."""
        core = self.core
        return None if core.closed else core.device.mapping(core.geo.total_size)

    def _pin(self, entry: Entry) -> Callable[[], None]:
        """Hold ``entry``'s extent (HELD: never reallocated) until the returned call, made
        exactly once (through SliceLease.release, which is idempotent)."""
        tables = self.tables
        start = entry.start
        tables.begin_read(start, entry.nblocks)
        self.leases += 1

        def unpin() -> None:
            # The extent is allocatable again once its last reader is gone (Tables.end_read).
            self.leases -= 1
            tables.end_read(start)

        return unpin

    def _leased(
        self,
        result: object,
        key: str,
        kb: bytes,
        index: Index,
        row: int,
        entry: Entry,
        now_s: int,
        unpin: Callable[[], None],
    ) -> SliceLease | None:
        """A read's result as a lease, which takes over ``unpin``; or None, unpinned.
        ``index``: the index the entry was found in (a reload replaces it)."""
        try:
            accepted = self._accepted(result, key, kb, index, row, entry, now_s)
        except BaseException:
            unpin()
            raise
        if not accepted:
            unpin()
            return None
        assert isinstance(result, (bytes, memoryview))
        if not isinstance(result, memoryview) or not isinstance(result.obj, mmap.mmap):
            unpin()
            return SliceLease.of(result)  # decoded into a private buffer: nothing pinned
        return SliceLease(result, unpin)

    def _resident(self, mapped: mmap.mmap, entry: Entry, kb: bytes) -> bool:
        """May ``entry``'s record be read on the event loop: stored raw (a compressed one
        is decoded, milliseconds for a large slice: the worker's job) and every page of it
        in memory (checking it cannot wait on the disk)?"""
        if entry.codec != CODEC_RAW:
            return False
        residency = self._residency
        if residency is None or residency.mapped is not mapped:
            residency = self._residency = Residency(mapped)
        length = RECORD_HEADER_SIZE + len(kb) + entry.stored_len
        return residency.resident(self.core.geo.block_offset(entry.start), length)

    def _find(self, key: str, kind: int) -> tuple[int, Entry, int] | None:
        """The visible, current, unexpired entry of ``key`` (row, entry, now), counted."""
        core = self.core
        stats = core.stats
        stats["lookups_total"] += 1
        if core.closed:
            stats["misses_total"] += 1
            return None
        kb = key.encode()
        h = key_hash(kb)
        self._sketch.add(h)
        index = self.tables.index
        row = index.find(kb, h)
        if row < 0 or not index.is_visible(row):
            stats["misses_total"] += 1
            return None
        entry = index.entry(row)
        if entry.kind != kind or core.purging(kb):
            stats["misses_total"] += 1
            return None
        now_s = now()
        if entry.expires and entry.expires <= now_s:
            stats["misses_total"] += 1
            stats["expired_total"] += 1
            core.spawn(self._drop_if_current(row, entry.gen, "expirations_total"))
            return None
        return row, entry, now_s

    async def _run_read(
        self,
        key: str,
        read: Callable[[Entry, bytes, tuple[int, int] | None], object],
        entry: Entry,
        kb: bytes,
        next_key: str | None,
    ) -> object:
        """``read`` in a worker thread; an I/O failure is counted, logged and a miss."""
        ahead = self._extent_to_prefetch(next_key) if self._prefetch and next_key else None
        try:
            return await self.core.run(read, entry, kb, ahead)
        except READ_FAILURES as exc:
            self._read_failed(key, exc)
            return None

    def _read_resident(
        self,
        key: str,
        read: Callable[[Entry, bytes, tuple[int, int] | None, bool], object],
        entry: Entry,
        kb: bytes,
    ) -> object:
        """``read`` of a resident record (nothing to read in), verified on this thread
        without the worker's hop; failures as in :meth:`_run_read`."""
        self.core.stats["resident_reads_total"] += 1
        try:
            return read(entry, kb, None, False)
        except READ_FAILURES as exc:
            self._read_failed(key, exc)
            return None

    def _read_failed(self, key: str, exc: Exception) -> None:
        """An I/O failure of a read: counted, logged, and a miss."""
        self.core.stats["read_errors_total"] += 1
        self.core.warnings.warning("l2_read_failed", f"L2 read of {key!r} failed: {exc}")

    def _accepted(
        self,
        result: object,
        key: str,
        kb: bytes,
        index: Index,
        row: int,
        entry: Entry,
        now_s: int,
    ) -> bool:
        """Whether a read's result may be served; a damaged record is dropped, and so is a
        result of an entry deleted or replaced while it was read (nothing deleted is served
        after delete() returned)."""
        core = self.core
        tables = self.tables
        stats = core.stats
        if result is BAD:
            stats["checksum_failures_total"] += 1
            stats["misses_total"] += 1
            core.warnings.warning(
                "l2_checksum_failure", f"L2 entry {key!r} failed verification; dropped"
            )
            if index is tables.index and index.is_visible(row) and index.gen_of(row) == entry.gen:
                index.set_flag(row, FLAG_BAD)
                core.spawn(self._drop_if_current(row, entry.gen, None))
            return False
        if (
            result is None
            or index is not tables.index
            or not index.is_visible(row)
            or index.gen_of(row) != entry.gen
            or core.purging(kb)
        ):
            stats["misses_total"] += 1
            return False
        assert isinstance(result, (bytes, memoryview))
        index.touch(row, now_s)
        stats["hits_total"] += 1
        stats["reads_total"] += 1
        stats["read_bytes_total"] += len(result)
        return True

    def map_record(
        self,
        mapped: mmap.mmap,
        entry: Entry,
        kb: bytes,
        ahead: tuple[int, int] | None = None,
        advise: bool = True,
    ) -> object:
        """Worker thread (or, for a resident record, the loop with ``advise=False``):
        fault in and verify one extent through the mapping. Returns a view of the payload
        in the mapping (or decoded bytes) or BAD."""
        core = self.core
        self._prefetch_quietly(ahead)
        klen = len(kb)
        offset = core.geo.block_offset(entry.start)
        length = RECORD_HEADER_SIZE + klen + entry.stored_len
        if offset + length > len(mapped):
            return BAD
        if advise:
            aligned = offset - offset % PAGE
            # Start reading the whole extent in at once, rather than a page fault at a time.
            mapped.madvise(mmap.MADV_WILLNEED, aligned, offset + length - aligned)
        # The checksum is also what brings every page in: the event loop later sends
        # resident pages.
        payload = self._verified_payload(memoryview(mapped)[offset : offset + length], entry, kb)
        if payload is None:
            return BAD
        if entry.codec == CODEC_RAW:
            return payload if len(payload) == entry.orig_len else BAD
        data = codec.decode(entry.codec, payload, entry.orig_len)
        return BAD if data is None else bytes(data)

    def read_record(self, entry: Entry, kb: bytes, ahead: tuple[int, int] | None = None) -> object:
        """Worker thread: read and verify one extent. Returns the payload or BAD.

        ``ahead`` is (offset, length) of the next slice of a sequential read: after the read
        the kernel is asked to start reading it in (POSIX_FADV_WILLNEED), so a cold next
        slice is on its way before the client asks for it.
        """
        core = self.core
        self._prefetch_quietly(ahead)
        length = RECORD_HEADER_SIZE + len(kb) + entry.stored_len
        raw = core.device.read_extent(length, core.geo.block_offset(entry.start))
        if len(raw) < length:
            return BAD
        payload = self._verified_payload(memoryview(raw), entry, kb)
        if payload is None:
            return BAD
        data = codec.decode(entry.codec, payload, entry.orig_len)
        return BAD if data is None else data

    def _prefetch_quietly(self, ahead: tuple[int, int] | None) -> None:
        if ahead is not None:
            try:
                self.core.device.prefetch(*ahead)
            except OSError:
                pass  # only a hint

    def _verified_payload(self, raw: memoryview, entry: Entry, kb: bytes) -> memoryview | None:
        """The payload of a whole record whose header matches the index entry and whose
        payload checksum holds, else None."""
        klen = len(kb)
        header = unpack_record_header(raw)
        if (
            header is None
            or header.format_id != self.core.format_id
            or header.key_hash != entry.key_hash
            or header.gen != entry.gen
            or header.stored_len != entry.stored_len
            or header.orig_len != entry.orig_len
            or header.codec != entry.codec
            or header.payload_checksum != entry.checksum
            or header.key_len != klen
            or raw[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + klen] != kb
        ):
            return None
        payload = raw[RECORD_HEADER_SIZE + klen : RECORD_HEADER_SIZE + klen + entry.stored_len]
        return payload if codec.checksum(payload) == entry.checksum else None

    def _extent_to_prefetch(self, key: str) -> tuple[int, int] | None:
        """(offset, length) of ``key``'s extent, if it is stored and visible."""
        nxt = key.encode()
        index = self.tables.index
        row = index.find(nxt, key_hash(nxt))
        if row < 0 or not index.is_visible(row):
            return None
        start, nblocks = index.extent_of(row)
        self.core.stats["prefetches_total"] += 1
        geo = self.core.geo
        return geo.block_offset(start), nblocks * geo.block_size
