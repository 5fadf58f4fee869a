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
* :meth:`ReadPath.get` (metadata, the old ``get_slice``): ``pread`` into a private copy.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable, Coroutine
from typing import Any

from cache.protocol import SliceData, SliceLease
from cache.rawdisk import codec
from cache.rawdisk.core import Core, now
from cache.rawdisk.index import FLAG_BAD, Entry
from cache.rawdisk.layout import (
    CODEC_RAW,
    KIND_SLICE,
    RECORD_HEADER_SIZE,
    key_hash,
    unpack_record_header,
)
from cache.rawdisk.policy import CountMinSketch

log = logging.getLogger("slicecache.rawdisk")

BAD = object()  # read result: damaged record
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

    def contains_slice(self, key: str) -> bool:
        """Whether a slice is indexed, for X-Cache (a damaged one still reads as a miss)."""
        kb = key.encode()
        index = self.tables.index
        row = index.find(kb, key_hash(kb))
        if row < 0 or not index.is_visible(row):
            return False
        entry = index.entry(row)
        if entry.kind != KIND_SLICE or (entry.expires and entry.expires <= now()):
            return False
        return not self.core.purging(kb)

    async def get(self, key: str, kind: int, next_key: str | None = None) -> SliceData | None:
        """``next_key``: what the caller expects to ask for next, prefetched if stored."""
        core = self.core
        tables = self.tables
        stats = core.stats
        stats["lookups_total"] += 1
        if core.closed:
            stats["misses_total"] += 1
            return None
        kb = key.encode()
        h = key_hash(kb)
        self._sketch.add(h)
        index = tables.index
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
        start = entry.start
        tables.begin_read(start, entry.nblocks)
        ahead = self._extent_to_prefetch(next_key) if self._prefetch and next_key else None
        try:
            result = await core.run(self.read_record, entry, kb, ahead)
        except (OSError, RuntimeError) as exc:
            stats["read_errors_total"] += 1
            log.warning("L2 read of %r failed: %s", key, exc)
            result = None
        finally:
            tables.end_read(start)
        if result is BAD:
            stats["checksum_failures_total"] += 1
            stats["misses_total"] += 1
            log.warning("L2 entry %r failed verification; dropped", key)
            if index is tables.index and index.is_visible(row) and index.gen_of(row) == entry.gen:
                index.set_flag(row, FLAG_BAD)
                core.spawn(self._drop_if_current(row, entry.gen, None))
            return None
        # The entry may have been deleted or replaced while we read it: serve only what is
        # still current, so nothing deleted is served after delete() returned.
        if (
            result is None
            or index is not tables.index
            or not index.is_visible(row)
            or index.gen_of(row) != entry.gen
            or core.purging(kb)
        ):
            stats["misses_total"] += 1
            return None
        assert isinstance(result, (bytes, memoryview))
        index.touch(row, now_s)
        stats["hits_total"] += 1
        stats["reads_total"] += 1
        stats["read_bytes_total"] += len(result)
        return result

    async def lease(self, key: str, kind: int, next_key: str | None = None) -> SliceLease | None:
        """``key``'s bytes as a zero-copy view of the device mapping, pinned until released.

        Falls back to :meth:`get` (a private copy under a no-op lease) when the device is
        not mapped (O_DIRECT)."""
        core = self.core
        mapped = core.device.mapping(core.geo.total_size) if not core.closed else None
        if mapped is None:
            data = await self.get(key, kind, next_key)
            return SliceLease.of(data) if data is not None else None
        tables = self.tables
        stats = core.stats
        stats["lookups_total"] += 1
        kb = key.encode()
        h = key_hash(kb)
        self._sketch.add(h)
        index = tables.index
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
        start = entry.start
        tables.begin_read(start, entry.nblocks)
        self.leases += 1
        pinned = True

        def unpin() -> None:
            # Idempotent through SliceLease.release; the extent is allocatable again once
            # the last reader of it is gone (Tables.end_read).
            self.leases -= 1
            tables.end_read(start)

        try:
            ahead = self._extent_to_prefetch(next_key) if self._prefetch and next_key else None
            try:
                result = await core.run(self.map_record, mapped, entry, kb, ahead)
            except (OSError, RuntimeError, ValueError) as exc:
                stats["read_errors_total"] += 1
                log.warning("L2 read of %r failed: %s", key, exc)
                result = None
            if result is BAD:
                stats["checksum_failures_total"] += 1
                stats["misses_total"] += 1
                log.warning("L2 entry %r failed verification; dropped", key)
                if (
                    index is tables.index
                    and index.is_visible(row)
                    and index.gen_of(row) == entry.gen
                ):
                    index.set_flag(row, FLAG_BAD)
                    core.spawn(self._drop_if_current(row, entry.gen, None))
                return None
            # Deleted or replaced while we verified it: serve only what is still current.
            if (
                result is None
                or index is not tables.index
                or not index.is_visible(row)
                or index.gen_of(row) != entry.gen
                or core.purging(kb)
            ):
                stats["misses_total"] += 1
                return None
            assert isinstance(result, (bytes, memoryview))
            index.touch(row, now_s)
            stats["hits_total"] += 1
            stats["reads_total"] += 1
            stats["read_bytes_total"] += len(result)
            if not isinstance(result, memoryview) or not isinstance(result.obj, mmap.mmap):
                return SliceLease.of(result)  # decoded into a private buffer: nothing pinned
            pinned = False  # the lease owns the pin from here on
            return SliceLease(result, unpin)
        finally:
            if pinned:
                unpin()

    def map_record(
        self,
        mapped: mmap.mmap,
        entry: Entry,
        kb: bytes,
        ahead: tuple[int, int] | None = None,
    ) -> object:
        """Worker thread: fault in and verify one extent through the mapping. Returns a
        view of the payload in the mapping (or decoded bytes) or BAD."""
        core = self.core
        if ahead is not None:
            try:
                core.device.prefetch(*ahead)
            except OSError:
                pass
        klen = len(kb)
        offset = core.geo.block_offset(entry.start)
        length = RECORD_HEADER_SIZE + klen + entry.stored_len
        if offset + length > len(mapped):
            return BAD
        aligned = offset - offset % PAGE
        # Start reading the whole extent in at once, rather than a page fault at a time.
        mapped.madvise(mmap.MADV_WILLNEED, aligned, offset + length - aligned)
        raw = memoryview(mapped)[offset : offset + length]
        header = unpack_record_header(raw)
        if (
            header is None
            or header.format_id != core.format_id
            or header.key_hash != entry.key_hash
            or header.gen != entry.gen
            or header.stored_len != entry.stored_len
            or header.orig_len != entry.orig_len
            or header.codec != entry.codec
            or header.payload_checksum != entry.checksum
            or header.key_len != klen
            or raw[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + klen] != kb
        ):
            return BAD
        payload = raw[RECORD_HEADER_SIZE + klen : length]
        # Also what brings every page in: the event loop later sends resident pages.
        if codec.checksum(payload) != entry.checksum:
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
        device = core.device
        if ahead is not None:
            try:
                device.prefetch(*ahead)
            except OSError:
                pass
        klen = len(kb)
        length = RECORD_HEADER_SIZE + klen + entry.stored_len
        raw = device.read_extent(length, core.geo.block_offset(entry.start))
        if len(raw) < length:
            return BAD
        header = unpack_record_header(raw)
        if (
            header is None
            or header.format_id != core.format_id
            or header.key_hash != entry.key_hash
            or header.gen != entry.gen
            or header.stored_len != entry.stored_len
            or header.orig_len != entry.orig_len
            or header.codec != entry.codec
            or header.payload_checksum != entry.checksum
            or header.key_len != klen
            or raw[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + klen] != kb
        ):
            return BAD
        payload = memoryview(raw)[RECORD_HEADER_SIZE + klen : length]
        if codec.checksum(payload) != entry.checksum:
            return BAD
        data = codec.decode(entry.codec, payload, entry.orig_len)
        return BAD if data is None else data

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
