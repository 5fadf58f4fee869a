"""RawDiskStore: the L2 tier over one preallocated file or block device.

See FORMAT.md for the on-disk format, the durability rules and the metric keys. In short:

* every mutation of the index or the block map runs on the event loop under one
  ``asyncio.Lock`` (``_mutate``) and appends a journal record; I/O, checksums and zstd
  run in a small thread pool;
* a read copies the extent with ``pread`` in a worker thread, checks the record header
  against the index and the payload's xxh3, and re-checks after the read that the entry
  is still the same generation, so a deleted or recycled extent is never served;
* a put writes into blocks allocated as HELD (not yet owned), then commits the index
  entry, unless a delete that covers its key happened meanwhile;
* the journal is fsynced every ``sync_interval`` seconds after an fdatasync of the data,
  so a durable journal record never names data that is not on disk; deletes and purges
  sync before they return; blocks a record frees are reused only once it is durable;
* a checkpoint hashes and writes a copy of the index (reads change access fields without
  the lock), is read back before its header is written, and never replaces the newest
  verified checkpoint (FORMAT.md 3.2 and 3.4 give the exact order of writes and syncs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from cache.protocol import SliceData
from cache.rawdisk import codec, journal
from cache.rawdisk.allocator import HELD, USED, BlockMap, fragmentation_of
from cache.rawdisk.checkpoint import (
    HEADER_SIZE,
    CheckpointHeader,
    read_checkpoint,
    read_header,
    sections_match,
    write_sections,
)
from cache.rawdisk.device import Device
from cache.rawdisk.errors import RawDiskError
from cache.rawdisk.incompressible import IncompressibleObjects
from cache.rawdisk.index import (
    DEAD,
    FLAG_BAD,
    Entry,
    Index,
    key_is_storable,
)
from cache.rawdisk.layout import (
    FORMAT_VERSION,
    KIND_META,
    KIND_SLICE,
    RECORD_HEADER_SIZE,
    SUPERBLOCK_OFFSETS,
    SUPERBLOCK_SIZE,
    Geometry,
    RecordHeader,
    Superblock,
    SuperblockState,
    compute_geometry,
    extent_blocks,
    key_hash,
    new_superblock,
    unpack_record_header,
    unpack_superblock,
)
from cache.rawdisk.policy import (
    ADMIT_MIN_USES,
    HIGH_WATERMARK,
    LOW_WATERMARK,
    SAMPLE,
    CountMinSketch,
    eviction_score,
)

if TYPE_CHECKING:
    from settings import RawDiskCacheSettings

log = logging.getLogger("slicecache.rawdisk")

T = TypeVar("T")

IO_THREADS = 4
# Checkpoint when this many journal records accumulated (bounds replay time at restart)
# or the journal half is this full.
CHECKPOINT_RECORDS = 100_000
CHECKPOINT_JOURNAL_FILL = 0.5
# Puts are declined while the journal half is this full (deletes always fit).
JOURNAL_PUT_LIMIT = 0.9
PURGE_WINDOW = 512 << 10
REAP_BATCH = 256
EVICT_BATCH = 64
EXPIRY_BATCH = 4096
FRAG_SCAN_SECONDS = 30.0
FRAG_WINDOW = 1 << 20
LOG_EVERY = 60.0  # a repeating L2 error is logged once a minute, with a count
_BAD = object()  # read result: damaged record

_COUNTERS = (
    "lookups_total",
    "hits_total",
    "misses_total",
    "expired_total",
    "reads_total",
    "read_bytes_total",
    "writes_total",
    "written_bytes_total",
    "stored_bytes_written_total",
    "puts_declined_total",
    "admission_rejects_total",
    "no_space_total",
    "write_errors_total",
    "read_errors_total",
    "evictions_total",
    "evicted_bytes_total",
    "expirations_total",
    "deletes_total",
    "purges_total",
    "purged_entries_total",
    "reclaimed_entries_total",
    "checksum_failures_total",
    "compressed_writes_total",
    "compression_skipped_total",
    "prefetches_total",
    "journal_records_total",
    "journal_bytes_total",
    "journal_syncs_total",
    "journal_sync_seconds_total",
    "checkpoints_total",
    "checkpoint_seconds_total",
    "checkpoint_failures_total",
    "replay_conflicts_total",
    "discarded_puts_total",
)


def _now() -> int:
    return int(time.time())


class RawDiskStore:
    """The L2 store. Build it with :meth:`open`; implements :class:`cache.protocol.Store`."""

    name = "l2"

    def __init__(
        self,
        settings: RawDiskCacheSettings,
        device: Device,
        superblock: Superblock,
    ) -> None:
        self._settings = settings
        self._device = device
        self._sb = superblock
        self._geo: Geometry = superblock.geometry
        self._format_id = superblock.format_id
        self._index = Index()
        self._map = BlockMap(self._geo.data_blocks)
        self._next_gen = 1
        self._ckpt_seq = 0
        # The slot holding the newest verified checkpoint: the next one goes to the other
        # slot, and a failed one leaves this one (and the journal half it names) untouched.
        self._good_slot = 0
        self._epoch = 1
        self._journal_pos = 0
        self._journal_seq = 0
        self._journal_buf: list[bytes] = []
        self._journal_buf_bytes = 0
        self._records_since_ckpt = 0
        self._sketch = CountMinSketch(min(self._geo.max_entries, 1 << 22))
        self._mutate = asyncio.Lock()
        self._persist = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="l2-io")
        self._readers: Counter[int] = Counter()
        self._held_by_readers: dict[int, int] = {}
        self._reading: dict[int, int] = {}  # start -> nblocks of extents being read
        self._rules: list[bytes] = []  # prefixes being purged right now
        self._delete_epoch = 0
        self._delete_log: list[tuple[int, bytes, bool]] = []
        self._inflight_puts: Counter[int] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Extents freed by records not yet durable (HELD until the next sync/checkpoint).
        self._unsynced_frees: list[tuple[int, int]] = []
        self._pending_free_blocks = 0
        self._defer_frees = False  # immediate while loading (replayed records are durable)
        self._sync_soon = False
        self._log_marks: dict[str, tuple[float, int]] = {}
        self._problems: list[str] = []  # found while loading (reported by the CLI)
        self._journal_damaged = False  # replay stopped at a damaged record
        self._maintenance: asyncio.Task[None] | None = None
        self._reaper_task: asyncio.Task[None] | None = None
        self._reap_wanted = asyncio.Event()
        self._closed = False
        self._stats: dict[str, float] = dict.fromkeys(_COUNTERS, 0.0)
        self._stats.update(
            journal_sync_seconds_last=0.0,
            checkpoint_seconds_last=0.0,
            checkpoint_bytes_last=0.0,
            load_seconds=0.0,
            replayed_records=0.0,
            superblock_repairs=0.0,
            index_recoveries=0.0,
        )
        self._largest_free_run = self._geo.data_blocks
        self._free_runs = 1
        self._last_frag_scan = 0.0
        self._expiry_cursor = 0
        self._compress = settings.enable_compression
        self._incompressible = IncompressibleObjects()
        self._prefetch = settings.enable_prefetch
        self.max_payload = (
            min((1 << 32) - 1, self._geo.data_blocks * self._geo.block_size // 8)
            - RECORD_HEADER_SIZE
            - 4096
        )

    # ===================================================================================
    # opening
    # ===================================================================================

    @classmethod
    async def open(
        cls,
        settings: RawDiskCacheSettings,
        *,
        index_capacity: int | None = None,
        read_only: bool = False,
    ) -> RawDiskStore:
        """Create, format or load the device; raises :class:`RawDiskError` on any problem.

        ``index_capacity`` overrides the number of index entries a new format reserves room
        for (default: one per 32 KiB of device); the format on disk wins when loading.
        ``read_only``: inspect the device without writing to it (the admin CLI's info and
        verify); repairs found while loading are reported, not made.
        """
        store = await asyncio.to_thread(cls._open_sync, settings, index_capacity, read_only)
        store._maintenance = asyncio.create_task(store._maintain(), name="l2-maintenance")
        store._reaper_task = asyncio.create_task(store._reaper(), name="l2-reaper")
        if store._index.dead:
            store._reap_wanted.set()
        return store

    @classmethod
    def _open_sync(
        cls, settings: RawDiskCacheSettings, index_capacity: int | None, read_only: bool = False
    ) -> RawDiskStore:
        started = time.perf_counter()
        device = Device.open(settings.device_path, read_only=read_only)
        try:
            store = cls._attach(settings, device, index_capacity)
        except BaseException:
            device.close()
            if device.created:
                with contextlib.suppress(OSError):
                    os.unlink(settings.device_path)
            raise
        store._stats["load_seconds"] = time.perf_counter() - started
        store._defer_frees = True
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
            store = cls._attach(settings, device, None, read_only=True)
        except BaseException:
            device.close()
            raise
        store._stats["load_seconds"] = time.perf_counter() - started
        return store

    @staticmethod
    def _examine(
        settings: RawDiskCacheSettings, device: Device, index_capacity: int | None
    ) -> tuple[Geometry, Superblock, bool, bool, int]:
        """Read-only look at the superblocks: (wanted geometry, superblock to use, must
        format, one copy needs a rewrite, generation). Raises :class:`RawDiskError` when the
        device must not be used as configured."""
        path = settings.device_path
        wanted = compute_geometry(settings.total_size, settings.block_size, index_capacity)
        size = device.size()
        states: list[tuple[str, Superblock | None]] = []
        for offset in SUPERBLOCK_OFFSETS:
            raw = device.pread(SUPERBLOCK_SIZE, offset) if size >= offset + SUPERBLOCK_SIZE else b""
            states.append(unpack_superblock(raw))
        sb = new_superblock(wanted, 0, 0)  # placeholder when formatting
        valid = [sb for state, sb in states if state == SuperblockState.VALID and sb]
        kinds = {state for state, _ in states}
        reformat = settings.reformat
        repair = False
        generation = 0
        if valid:
            sb = valid[0]
            generation = sb.generation
            repair = states[0][0] != SuperblockState.VALID or states[1][0] != SuperblockState.VALID
            problem = ""
            if sb.version != FORMAT_VERSION:
                newer = "newer" if sb.version > FORMAT_VERSION else "older"
                problem = (
                    f"it was formatted with format version {sb.version}, {newer} than the "
                    f"version {FORMAT_VERSION} this build reads"
                )
            elif sb.total_size != settings.total_size or sb.block_size != settings.block_size:
                problem = (
                    f"its geometry is total_size={sb.total_size} block_size={sb.block_size}, "
                    f"but the settings say total_size={settings.total_size} "
                    f"block_size={settings.block_size}"
                )
            elif size < sb.total_size:
                problem = f"the file holds {size} bytes, less than its total_size {sb.total_size}"
            if problem and not reformat:
                raise RawDiskError(
                    f"refusing to use L2 device {path}: {problem}. Set "
                    "SLICECACHE_RAW_DISK_CACHE__REFORMAT=true to erase and reformat it."
                )
            must_format = bool(problem)
        elif kinds == {SuperblockState.EMPTY}:
            must_format = True
        else:
            what = (
                "its superblock is damaged (checksum mismatch in both copies)"
                if SuperblockState.DAMAGED in kinds
                else "it does not hold a slicecache L2 store (unknown superblock)"
            )
            if not reformat:
                raise RawDiskError(
                    f"refusing to use L2 device {path}: {what}. Set "
                    "SLICECACHE_RAW_DISK_CACHE__REFORMAT=true to erase and reformat it."
                )
            must_format = True

        return wanted, sb, must_format, repair, generation

    @classmethod
    def _attach(
        cls,
        settings: RawDiskCacheSettings,
        device: Device,
        index_capacity: int | None,
        read_only: bool = False,
    ) -> RawDiskStore:
        path = settings.device_path
        wanted, sb, must_format, repair, generation = cls._examine(settings, device, index_capacity)
        if must_format and read_only:
            raise RawDiskError(f"{path} does not hold a usable slicecache L2 store")
        if must_format:
            device.reserve(wanted.total_size)
            sb = new_superblock(wanted, int.from_bytes(os.urandom(8), "little"), generation + 1)
            store = cls(settings, device, sb)
            store._format()
            log.info("formatted L2 device %s: %s", path, wanted)
        elif read_only:
            store = cls(settings, device, sb)
            if repair:
                store._problems.append("one superblock copy is damaged")
            store._load(read_only=True)
            return store
        else:
            device.reserve(sb.total_size)
            store = cls(settings, device, sb)
            if repair:
                store._problems.append("one superblock copy was damaged: rewrote it")
                packed = sb.pack()
                for offset in SUPERBLOCK_OFFSETS:
                    device.pwrite(packed, offset)
                device.sync_meta()
                store._stats["superblock_repairs"] = 1.0
                done = "left as it is (read-only)" if device.read_only else "was rewritten"
                log.warning("L2 device %s: one superblock copy was damaged and %s", path, done)
            store._load()
        if settings.use_direct_io:
            device.enable_direct_io(sb.block_size, sb.geometry.data_offset)
            if not device.direct_io:
                log.warning(
                    "use_direct_io=true but L2 device %s uses buffered I/O: %s",
                    path,
                    device.direct_io_reason,
                )
        return store

    def _format(self) -> None:
        geo = self._geo
        dev = self._device
        for epoch in (0, 1):
            dev.pwrite(bytes(4096), geo.journal_half(epoch))
        dev.pwrite(bytes(HEADER_SIZE), geo.checkpoint_slot(1))
        self._ckpt_seq = 0
        self._epoch = 1
        self._write_checkpoint_sync(journal_epoch=1)
        packed = self._sb.pack()
        for offset in SUPERBLOCK_OFFSETS:
            dev.pwrite(packed, offset)
        dev.sync_meta()

    def _write_checkpoint_sync(self, journal_epoch: int) -> None:
        """Write a full checkpoint into the next slot, durably (startup only)."""
        seq = self._ckpt_seq + 1
        slot_number = 1 - self._good_slot
        slot = self._geo.checkpoint_slot(slot_number)
        views = self._index.sections()
        try:
            sections, map_len = write_sections(
                self._device.pwrite, slot, self._geo.checkpoint_slot_size, views, self._map.map
            )
        finally:
            for view in views:
                if isinstance(view, memoryview):
                    view.release()
        header = self._checkpoint_header(seq, journal_epoch, sections, map_len)
        self._device.sync_meta()
        self._device.pwrite(header.pack(), slot)
        self._device.sync_meta()
        self._ckpt_seq = seq
        self._good_slot = slot_number

    def _checkpoint_header(
        self,
        seq: int,
        journal_epoch: int,
        sections: tuple[tuple[int, int], ...],
        map_len: int,
    ) -> CheckpointHeader:
        return CheckpointHeader(
            format_id=self._format_id,
            seq=seq,
            journal_epoch=journal_epoch,
            next_gen=self._next_gen,
            created=time.time(),
            counters=self._index.counters(),
            map_raw_len=map_len,
            sections=sections,
        )

    def _load(self, read_only: bool = False) -> None:
        geo = self._geo
        dev = self._device
        headers = []
        max_epoch = 0
        max_seq = 0
        for slot in (0, 1):
            header = read_header(dev.fd, geo.checkpoint_slot(slot), self._format_id)
            if header is not None:
                headers.append((header, slot))
                max_epoch = max(max_epoch, header.journal_epoch)
                max_seq = max(max_seq, header.seq)
        headers.sort(key=lambda item: item[0].seq, reverse=True)
        loaded = None
        unusual = False
        for position, (header, slot) in enumerate(headers):
            loaded = read_checkpoint(dev.fd, geo.checkpoint_slot(slot), header, geo.data_blocks)
            if loaded is not None:
                unusual = position > 0
                self._good_slot = slot
                break
            if not read_only:
                log.error("L2 device %s: checkpoint seq %d is damaged", dev.path, header.seq)
            if position == 0:
                self._problems.append(
                    f"the newest checkpoint (seq {header.seq}) is damaged"
                    + ("" if read_only else ": rewrote it")
                )
        for half in (0, 1):
            first = journal.first_epoch(dev.pread(4096, geo.journal_half(half)), self._format_id)
            if first is not None:
                max_epoch = max(max_epoch, first)
        if loaded is None:
            self._problems.append(
                "no valid checkpoint: the index is empty, cached data unreachable"
                + ("" if read_only else " (rewrote an empty checkpoint)")
            )
            if read_only:
                self._stats["index_recoveries"] = 1.0
                self._ckpt_seq = max_seq
                self._epoch = max_epoch + 1
                return
            log.error(
                "L2 device %s: no valid checkpoint; starting with an empty index "
                "(cached data is dropped, never served unverified)",
                dev.path,
            )
            self._stats["index_recoveries"] = 1.0
            self._ckpt_seq = max_seq
            self._write_checkpoint_sync(journal_epoch=max_epoch + 1)
            self._epoch = max_epoch + 1
            return
        header = loaded.header
        self._index = loaded.index
        self._map = BlockMap(geo.data_blocks, loaded.block_map)
        self._next_gen = header.next_gen
        self._ckpt_seq = max_seq  # past a damaged newer header too: seqs only grow
        self._reclaim_all_dead()
        replayed = self._replay(header.journal_epoch)
        self._stats["replayed_records"] = float(replayed)
        if read_only:
            return
        if unusual or self._journal_damaged or replayed > CHECKPOINT_RECORDS // 2:
            # Start a fresh epoch past anything on disk, so no stale journal half can ever
            # be replayed after this one. A damaged journal too: otherwise, with nothing
            # new to journal, the damaged record stays where every later open finds it
            # (and `verify --repair` could never end clean).
            self._ckpt_seq = max(self._ckpt_seq, max_seq)
            self._epoch = max(max_epoch, self._epoch) + 1
            self._journal_pos = 0
            self._journal_seq = 0
            self._write_checkpoint_sync(journal_epoch=self._epoch)
            self._records_since_ckpt = 0

    def _replay(self, epoch: int) -> int:
        count = 0
        self._epoch = epoch
        self._journal_pos = 0
        self._journal_seq = 0
        for current in (epoch, epoch + 1):
            end, last_seq, damaged = self._replay_half(current)
            if last_seq < 0 and current != epoch:
                break
            count += last_seq + 1
            self._epoch = current
            self._journal_pos = end
            self._journal_seq = last_seq + 1
            if damaged:
                self._journal_damaged = True
                # A damaged record of this epoch (not a clean end): records after it are
                # lost, so the next epoch must not be replayed on top of the gap.
                log.error("L2 journal epoch %d is damaged at offset %d", current, end)
                self._problems.append(
                    f"journal epoch {current} is damaged at offset {end}: records after it lost"
                )
                break
        self._records_since_ckpt = count
        return count

    def _replay_half(self, epoch: int) -> tuple[int, int, bool]:
        """Apply one epoch's records; (end offset, last seq or -1, damaged record found)."""
        geo = self._geo
        base = geo.journal_half(epoch)
        pos = 0
        seq = 0
        window = 8 << 20
        while True:
            length = min(window, geo.journal_half_size - pos)
            if length <= 0:
                return pos, seq - 1, False
            data = self._device.pread(length, base + pos)
            consumed = 0
            for end, _epoch, rec_seq, record in journal.scan(data, self._format_id, epoch, seq):
                self._apply(record, replay=True)
                consumed = end
                seq = rec_seq + 1
            pos += consumed
            if consumed + journal.MAX_RECORD < len(data) or len(data) < length or not consumed:
                break
        tail = self._device.pread(journal.HEADER.size, base + pos)
        damaged = False
        if len(tail) == journal.HEADER.size:
            _len, _kind, tail_epoch, tail_seq = journal.HEADER.unpack(tail)
            damaged = tail_epoch == epoch and tail_seq == seq
        return pos, seq - 1, damaged

    # ===================================================================================
    # applying changes (live and replay)
    # ===================================================================================

    def _apply(self, record: journal.Record, replay: bool) -> None:
        if isinstance(record, journal.PutRecord):
            self._apply_put(record, replay)
        elif isinstance(record, journal.DeleteRecord):
            index = self._index
            if (
                record.row < index.nrows
                and index.flags_of(record.row)
                and index.gen_of(record.row) == record.gen
            ):
                self._drop_row(record.row, journal_it=False)
        elif isinstance(record, journal.PurgeRecord):
            index = self._index
            index.mark_prefix(record.prefix, 0, len(index.arena))
            self._reclaim_all_dead()
        else:
            self._reset()

    def _apply_put(self, rec: journal.PutRecord, replay: bool) -> bool:
        index = self._index
        h = key_hash(rec.key)
        row = index.find(rec.key, h)
        if row >= 0 and index.state_byte(row) == DEAD:
            self._reclaim(row)
            row = -1
        if replay:
            if row >= 0 and row != rec.row:
                self._drop_row(row, journal_it=False)
                row = -1
            if row < 0 and rec.row < index.nrows and index.flags_of(rec.row):
                self._drop_row(rec.row, journal_it=False)
            if not self._map.is_free(rec.start, rec.nblocks):
                if row >= 0:
                    self._drop_row(row, journal_it=False)
                self._stats["replay_conflicts_total"] += 1
                return False
            self._map.claim(rec.start, rec.nblocks)
            self._next_gen = max(self._next_gen, rec.gen + 1)
        else:
            self._map.mark(rec.start, rec.nblocks, USED)
        entry = Entry(
            key_hash=h,
            gen=rec.gen,
            checksum=rec.checksum,
            start=rec.start,
            nblocks=rec.nblocks,
            stored_len=rec.stored_len,
            orig_len=rec.orig_len,
            expires=rec.expires,
            created=rec.created,
            atime=rec.created,
            key_len=len(rec.key),
            codec=rec.codec,
            kind=rec.kind,
            freq=0,
            flags=0,
        )
        if row >= 0:
            old_start, old_blocks = index.replace(row, entry)
            self._free_extent(old_start, old_blocks)
        else:
            index.insert(rec.key, entry, rec.row)
        return True

    def _free_extent(self, start: int, nblocks: int) -> None:
        if self._defer_frees:
            # Not reusable until the record that frees it is durable: otherwise a crash
            # could replay an index entry naming blocks another key has overwritten.
            self._map.mark(start, nblocks, HELD)
            self._unsynced_frees.append((start, nblocks))
            self._pending_free_blocks += nblocks
            return
        if self._readers.get(start):
            self._map.mark(start, nblocks, HELD)
            self._held_by_readers[start] = nblocks
        else:
            self._map.free(start, nblocks)

    def _take_frees(self) -> list[tuple[int, int]]:
        frees = self._unsynced_frees
        self._unsynced_frees = []
        return frees

    def _release_frees(self, frees: list[tuple[int, int]]) -> None:
        """The records freeing these extents are durable now: make them allocatable."""
        for start, nblocks in frees:
            self._pending_free_blocks -= nblocks
            if self._readers.get(start):
                self._held_by_readers[start] = nblocks
            else:
                self._map.free(start, nblocks)

    def _keep_frees(self, frees: list[tuple[int, int]]) -> None:
        """A sync failed or was cut short: these stay pending for the next one."""
        self._unsynced_frees[:0] = frees

    def _drop_row(self, row: int, journal_it: bool) -> None:
        gen = self._index.gen_of(row)
        start, nblocks = self._index.remove(row)
        self._free_extent(start, nblocks)
        if journal_it:
            self._journal(journal.DeleteRecord(row, gen))

    def _reclaim(self, row: int) -> None:
        """Free a purged row (its PURGE record is already in the journal)."""
        start, nblocks = self._index.remove(row)
        self._free_extent(start, nblocks)
        self._stats["reclaimed_entries_total"] += 1

    def _reclaim_all_dead(self) -> None:
        while self._index.dead:
            rows = self._index.dead_rows(10_000)
            if not rows:
                break
            for row in rows:
                self._reclaim(row)

    def _reset(self) -> None:
        self._index = Index()
        self._map.clear_used()
        # Extents being read stay unallocatable until their reader is done.
        for start, nblocks in self._reading.items():
            # Already HELD (freed, waiting for a sync): not counted free, released later.
            if start not in self._held_by_readers and self._map.map[start] != HELD:
                self._map.mark(start, nblocks, HELD)
                self._map.free_blocks -= nblocks
                self._held_by_readers[start] = nblocks

    # ===================================================================================
    # journal and checkpoints
    # ===================================================================================

    def _journal(self, record: journal.Record) -> None:
        raw = journal.encode(record, self._epoch, self._journal_seq, self._format_id)
        self._journal_seq += 1
        self._journal_buf.append(raw)
        self._journal_buf_bytes += len(raw)
        self._records_since_ckpt += 1
        self._stats["journal_records_total"] += 1
        self._stats["journal_bytes_total"] += len(raw)

    def _journal_fill(self) -> float:
        return (self._journal_pos + self._journal_buf_bytes) / self._geo.journal_half_size

    def _take_journal(self) -> tuple[bytes, int, int]:
        """The buffered records that fit in the current half, and where they go."""
        data = b"".join(self._journal_buf)
        self._journal_buf = []
        self._journal_buf_bytes = 0
        room = self._geo.journal_half_size - self._journal_pos
        if len(data) > room:
            # Cut at a record boundary; the rest is covered by the checkpoint that a full
            # journal forces (losing a suffix is the same as crashing before the sync).
            cut = 0
            for _end, _e, _s, _r in journal.scan(data[:room], self._format_id, None, None):
                cut = _end
            data = data[:cut]
            self._ckpt_due = True
        offset = self._geo.journal_half(self._epoch) + self._journal_pos
        self._journal_pos += len(data)
        return data, offset, len(data)

    _ckpt_due = False

    async def sync(self) -> None:
        """Make every change so far durable: data, then the journal records naming it."""
        async with self._persist:
            await self._sync_locked()

    async def _sync_locked(self) -> None:
        if self._device.fd < 0:
            return
        data, offset, _length = self._take_journal()
        # Frees named by records that a full journal cut off wait for the checkpoint.
        frees = [] if self._ckpt_due else self._take_frees()
        self._sync_soon = False
        started = time.perf_counter()

        def work() -> None:
            self._device.sync_data()
            if data:
                self._device.pwrite(data, offset)
            self._device.sync_meta()

        try:
            await self._run(work)
        except BaseException:
            self._keep_frees(frees)
            raise
        self._release_frees(frees)
        elapsed = time.perf_counter() - started
        self._stats["journal_syncs_total"] += 1
        self._stats["journal_sync_seconds_total"] += elapsed
        self._stats["journal_sync_seconds_last"] = elapsed

    async def checkpoint(self) -> None:
        """Write the whole index to the next checkpoint slot and start a new journal epoch.

        Crash-ordered (FORMAT.md 3.4): sections written from a snapshot and read back
        verified, all under the mutation lock (so the snapshot and the epoch switch are one
        point in the journal); then data fdatasync, the old epoch's tail, fdatasync, the
        header, fdatasync. A checkpoint that does not verify writes no header and does not
        move the journal to a new epoch: the slot alternation advances only past a verified
        checkpoint, so the last good one (and the journal half it names) is never reused.
        """
        started = time.perf_counter()
        async with self._persist:
            async with self._mutate:
                if self._index.arena_dead and (
                    self._index.checkpoint_bytes() > 0.8 * self._index_budget()
                ):
                    await self._compact_locked()  # no freed key bytes where room is short
                seq = self._ckpt_seq + 1
                slot_number = 1 - self._good_slot
                slot = self._geo.checkpoint_slot(slot_number)
                views = self._index.sections()
                block_map = bytes(self._map.map)  # reads free HELD blocks without the lock
                try:
                    sections, map_len = await self._run(
                        self._write_verified_sections, slot, views, block_map
                    )
                except ValueError as exc:
                    self._checkpoint_failed(f"{exc} (evicting to shrink the index)")
                    self._index_pressure = True
                    return
                finally:
                    for view in views:
                        if isinstance(view, memoryview):
                            view.release()
                if not sections:
                    self._checkpoint_failed("sections did not read back as written")
                    return
                tail, tail_offset, _ = self._take_journal()
                frees = self._take_frees()  # the snapshot names none of these extents
                new_epoch = self._epoch + 1
                header = self._checkpoint_header(seq, new_epoch, sections, map_len)
                self._epoch = new_epoch
                self._journal_pos = 0
                self._journal_seq = 0
                self._records_since_ckpt = 0
                self._ckpt_due = False

            packed = header.pack()

            def finish() -> None:
                device = self._device
                device.sync_data()  # the data every tail record names, before the tail
                if tail:
                    device.pwrite(tail, tail_offset)
                device.sync_meta()  # sections and tail, before the header naming them
                for _attempt in range(3):
                    device.pwrite(packed, slot)
                    device.sync_meta()
                    if device.pread(HEADER_SIZE, slot) == packed:
                        return
                raise OSError(f"checkpoint header at {slot} does not read back")

            try:
                await self._run(finish)
            except BaseException:
                self._keep_frees(frees)
                raise
            self._release_frees(frees)
            self._ckpt_seq = seq
            self._good_slot = slot_number
        elapsed = time.perf_counter() - started
        self._stats["checkpoints_total"] += 1
        self._stats["checkpoint_seconds_total"] += elapsed
        self._stats["checkpoint_seconds_last"] = elapsed
        self._stats["checkpoint_bytes_last"] = float(HEADER_SIZE + header.payload_bytes)

    def _write_verified_sections(
        self, slot: int, views: list[bytes | bytearray | memoryview], block_map: bytes
    ) -> tuple[tuple[tuple[int, int], ...], int]:
        """Worker thread: write a checkpoint's sections, fdatasync, read them back.

        Returns ((), 0) when they do not read back with the digests computed while writing.
        """
        sections, map_len = write_sections(
            self._device.pwrite, slot, self._geo.checkpoint_slot_size, views, block_map
        )
        self._device.sync_meta()
        if not sections_match(self._device.fd, slot, sections):
            return (), 0
        return sections, map_len

    def _checkpoint_failed(self, reason: str) -> None:
        self._stats["checkpoint_failures_total"] += 1
        self._log_limited("checkpoint", logging.ERROR, "L2 checkpoint skipped: %s", reason)

    def _log_limited(self, what: str, level: int, msg: str, *args: object) -> None:
        """Log at most once per LOG_EVERY seconds per ``what``, with how many were held back."""
        now = time.monotonic()
        last, held = self._log_marks.get(what, (-math.inf, 0))
        if now - last < LOG_EVERY:
            self._log_marks[what] = (last, held + 1)
            return
        self._log_marks[what] = (now, 0)
        if held:
            msg += f" ({held} more like this in the last {LOG_EVERY:.0f} s)"
        log.log(level, msg, *args)

    _index_pressure = False

    # ===================================================================================
    # thread pool helpers
    # ===================================================================================

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ===================================================================================
    # reads
    # ===================================================================================

    async def get_slice(self, key: str) -> SliceData | None:
        return await self._get(key, KIND_SLICE)

    async def get_meta(self, key: str) -> bytes | None:
        data = await self._get(key, KIND_META)
        if data is None:
            return None
        return bytes(data)

    def contains_slice(self, key: str) -> bool:
        """Whether a slice is indexed, for X-Cache (a damaged one still reads as a miss)."""
        kb = key.encode()
        index = self._index
        row = index.find(kb, key_hash(kb))
        if row < 0 or not index.is_visible(row):
            return False
        entry = index.entry(row)
        if entry.kind != KIND_SLICE or (entry.expires and entry.expires <= _now()):
            return False
        return not (self._rules and any(kb.startswith(p) for p in self._rules))

    async def _get(self, key: str, kind: int) -> SliceData | None:
        stats = self._stats
        stats["lookups_total"] += 1
        if self._closed:
            stats["misses_total"] += 1
            return None
        kb = key.encode()
        h = key_hash(kb)
        self._sketch.add(h)
        index = self._index
        row = index.find(kb, h)
        if row < 0 or not index.is_visible(row):
            stats["misses_total"] += 1
            return None
        entry = index.entry(row)
        if entry.kind != kind or (self._rules and any(kb.startswith(p) for p in self._rules)):
            stats["misses_total"] += 1
            return None
        now = _now()
        if entry.expires and entry.expires <= now:
            stats["misses_total"] += 1
            stats["expired_total"] += 1
            self._spawn(self._drop_if_current(row, entry.gen, "expirations_total"))
            return None
        start = entry.start
        self._readers[start] += 1
        self._reading[start] = entry.nblocks
        ahead = self._next_extent(kb) if self._prefetch and kind == KIND_SLICE else None
        try:
            result = await self._run(self._read_record, entry, kb, ahead)
        except (OSError, RuntimeError) as exc:
            stats["read_errors_total"] += 1
            log.warning("L2 read of %r failed: %s", key, exc)
            result = None
        finally:
            self._release_reader(start)
        if result is _BAD:
            stats["checksum_failures_total"] += 1
            stats["misses_total"] += 1
            log.warning("L2 entry %r failed verification; dropped", key)
            if index is self._index and index.is_visible(row) and index.gen_of(row) == entry.gen:
                index.set_flag(row, FLAG_BAD)
                self._spawn(self._drop_if_current(row, entry.gen, None))
            return None
        # The entry may have been deleted or replaced while we read it: serve only what is
        # still current, so nothing deleted is served after delete() returned.
        if (
            result is None
            or index is not self._index
            or not index.is_visible(row)
            or index.gen_of(row) != entry.gen
            or (self._rules and any(kb.startswith(p) for p in self._rules))
        ):
            stats["misses_total"] += 1
            return None
        assert isinstance(result, (bytes, memoryview))
        index.touch(row, now)
        stats["hits_total"] += 1
        stats["reads_total"] += 1
        stats["read_bytes_total"] += len(result)
        return result

    def _release_reader(self, start: int) -> None:
        left = self._readers[start] - 1
        if left > 0:
            self._readers[start] = left
            return
        del self._readers[start]
        self._reading.pop(start, None)
        nblocks = self._held_by_readers.pop(start, None)
        if nblocks is not None:
            self._map.free(start, nblocks)

    def _read_record(self, entry: Entry, kb: bytes, ahead: tuple[int, int] | None = None) -> object:
        """Worker thread: read and verify one extent. Returns the payload or _BAD.

        ``ahead`` is (offset, length) of the next slice of a sequential read: after the read
        the kernel is asked to start reading it in (POSIX_FADV_WILLNEED), so a cold next
        slice is on its way before the client asks for it.
        """
        if ahead is not None:
            try:
                self._device.prefetch(*ahead)
            except OSError:
                pass
        klen = len(kb)
        length = RECORD_HEADER_SIZE + klen + entry.stored_len
        raw = self._device.read_extent(length, self._geo.block_offset(entry.start))
        if len(raw) < length:
            return _BAD
        header = unpack_record_header(raw)
        if (
            header is None
            or header.format_id != self._format_id
            or header.key_hash != entry.key_hash
            or header.gen != entry.gen
            or header.stored_len != entry.stored_len
            or header.orig_len != entry.orig_len
            or header.codec != entry.codec
            or header.payload_checksum != entry.checksum
            or header.key_len != klen
            or raw[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + klen] != kb
        ):
            return _BAD
        payload = memoryview(raw)[RECORD_HEADER_SIZE + klen : length]
        if codec.checksum(payload) != entry.checksum:
            return _BAD
        data = codec.decode(entry.codec, payload, entry.orig_len)
        return _BAD if data is None else data

    def _next_extent(self, kb: bytes) -> tuple[int, int] | None:
        """Where the next slice of ``kb`` (``<entry> <version> <index + 1>``) is, if stored."""
        head, sep, tail = kb.rpartition(b" ")
        if not sep or not tail.isdigit():
            return None
        nxt = head + b" " + str(int(tail) + 1).encode()
        row = self._index.find(nxt, key_hash(nxt))
        if row < 0 or not self._index.is_visible(row):
            return None
        start, nblocks = self._index.extent_of(row)
        self._stats["prefetches_total"] += 1
        return self._geo.block_offset(start), nblocks * self._geo.block_size

    # ===================================================================================
    # writes
    # ===================================================================================

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
        return await self._put(key, data, expires_at, KIND_SLICE, compressible)

    async def put_meta(
        self, key: str, meta: bytes, expires_at: float | None, *, epoch: int | None = None
    ) -> bool:
        return await self._put(key, meta, expires_at, KIND_META, False)

    def _declined(self, counter: str | None = None) -> bool:
        self._stats["puts_declined_total"] += 1
        if counter:
            self._stats[counter] += 1
        return False

    def _over(self, fraction: float) -> bool:
        geo = self._geo
        if self._map.used_blocks - self._pending_free_blocks > fraction * geo.data_blocks:
            return True
        return self._index.live > fraction * geo.max_entries

    async def _put(
        self,
        key: str,
        data: SliceData,
        expires_at: float | None,
        kind: int,
        compressible: bool | None,
    ) -> bool:
        if self._closed:
            return self._declined()
        kb = key.encode()
        if not key_is_storable(kb) or len(data) > self.max_payload:
            return self._declined()
        now = time.time()
        if expires_at is not None and expires_at <= now:
            return self._declined()
        expires = 0 if expires_at is None else min(math.ceil(expires_at), (1 << 32) - 1)
        h = key_hash(kb)
        if self._journal_fill() > JOURNAL_PUT_LIMIT:
            self._ckpt_due = True
            return self._declined()
        if self._over(LOW_WATERMARK) and self._sketch.estimate(h) < ADMIT_MIN_USES:
            if self._index.find(kb, h) < 0:
                return self._declined("admission_rejects_total")
        compress = self._compress and compressible is not False and kind == KIND_SLICE
        # Registered before compression starts: a delete that covers this key while zstd
        # (or the write) runs in a worker thread must make the put drop itself at commit.
        start_epoch = self._delete_epoch
        self._inflight_puts[start_epoch] += 1
        try:
            if compress and not self._incompressible.worth_trying(kb):
                self._stats["compression_skipped_total"] += 1  # its object did not compress
                codec_id, payload = 0, data
            elif compress:
                codec_id, payload, tried = await self._run(codec.encode, data, True)
                if tried:
                    self._incompressible.tried(kb, paid=codec_id != 0)
                if tried and codec_id == 0:
                    self._stats["compression_skipped_total"] += 1
            else:
                codec_id, payload = 0, data
            nblocks = extent_blocks(len(kb), len(payload), self._geo.block_size)
            async with self._mutate:
                start = self._allocate(nblocks)
                gen = self._next_gen
                self._next_gen += 1
            if start < 0 and self._pending_free_blocks >= nblocks and not self._closed:
                # Evicted space becomes reusable once its records are durable: sync now
                # rather than decline every put until the next periodic sync.
                await self.sync()
                async with self._mutate:
                    start = self._allocate(nblocks)
            if start < 0:
                return self._declined("no_space_total")
            created = int(now)
            try:
                checksum = await self._run(
                    self._write_record,
                    kb,
                    h,
                    gen,
                    payload,
                    len(data),
                    codec_id,
                    kind,
                    created,
                    start,
                )
            except (OSError, RuntimeError) as exc:
                self._stats["write_errors_total"] += 1
                log.warning("L2 write of %r failed: %s", key, exc)
                async with self._mutate:
                    self._map.free(start, nblocks)
                return self._declined()
            async with self._mutate:
                if self._closed or self._deleted_since(start_epoch, kb):
                    self._map.free(start, nblocks)
                    self._stats["discarded_puts_total"] += 1
                    return self._declined()
                row = self._index.find(kb, h)
                if row < 0 or self._index.state_byte(row) == DEAD:
                    if row >= 0:
                        self._reclaim(row)
                    row = self._index.take_row()
                record = journal.PutRecord(
                    row=row,
                    gen=gen,
                    checksum=checksum,
                    start=start,
                    nblocks=nblocks,
                    stored_len=len(payload),
                    orig_len=len(data),
                    expires=expires,
                    created=created,
                    codec=codec_id,
                    kind=kind,
                    key=kb,
                )
                self._apply_put(record, replay=False)
                self._journal(record)
        finally:
            left = self._inflight_puts[start_epoch] - 1
            if left:
                self._inflight_puts[start_epoch] = left
            else:
                del self._inflight_puts[start_epoch]
                self._prune_delete_log()
        stats = self._stats
        stats["writes_total"] += 1
        stats["written_bytes_total"] += len(data)
        stats["stored_bytes_written_total"] += len(payload)
        if codec_id:
            stats["compressed_writes_total"] += 1
        if self._over(HIGH_WATERMARK):
            self._wake_maintenance()
        return True

    def _write_record(
        self,
        kb: bytes,
        h: int,
        gen: int,
        payload: SliceData,
        orig_len: int,
        codec_id: int,
        kind: int,
        created: int,
        start: int,
    ) -> int:
        """Worker thread: checksum and write one extent; returns the payload checksum."""
        checksum = codec.checksum(payload)
        header = RecordHeader(
            codec=codec_id,
            kind=kind,
            key_len=len(kb),
            key_hash=h,
            gen=gen,
            format_id=self._format_id,
            stored_len=len(payload),
            orig_len=orig_len,
            payload_checksum=checksum,
            created=created,
        ).pack()
        body = payload if isinstance(payload, (bytes, memoryview)) else memoryview(payload)
        self._device.write_extent(
            [header + bytes(RECORD_HEADER_SIZE - len(header)) + kb, body],
            self._geo.block_offset(start),
        )
        return checksum

    def _allocate(self, nblocks: int) -> int:
        """Allocate (as HELD) a contiguous extent, evicting a little if needed.

        Blocks freed by an eviction become allocatable only after the next sync (see
        ``_free_extent``), so when space is short this evicts enough for the put to fit
        after that sync, asks for it soon, and declines this put.
        """
        index = self._index
        start = self._map.allocate(nblocks, HELD)
        for _ in range(EVICT_BATCH):
            if start >= 0 and index.live < self._geo.max_entries:
                return start
            if start < 0 and self._pending_free_blocks >= nblocks:
                break
            if not self._evict_one():
                break
            if start < 0:
                start = self._map.allocate(nblocks, HELD)
        if start >= 0 and index.live < self._geo.max_entries:
            return start
        if start >= 0:
            self._map.free(start, nblocks)
        self._sync_soon = True
        return -1

    def _deleted_since(self, epoch: int, kb: bytes) -> bool:
        for deleted_at, target, is_prefix in self._delete_log:
            if deleted_at > epoch and (kb.startswith(target) if is_prefix else kb == target):
                return True
        return False

    def _record_delete(self, target: bytes, is_prefix: bool) -> None:
        self._delete_epoch += 1
        if self._inflight_puts:
            self._delete_log.append((self._delete_epoch, target, is_prefix))

    def _prune_delete_log(self) -> None:
        if not self._inflight_puts:
            self._delete_log.clear()
        elif self._delete_log:
            oldest = min(self._inflight_puts)
            self._delete_log = [item for item in self._delete_log if item[0] > oldest]

    # ===================================================================================
    # deletes
    # ===================================================================================

    async def delete(self, object_key: str) -> int:
        kb = object_key.encode()
        if not key_is_storable(kb):
            return 0
        async with self._mutate:
            removed = 0
            self._record_delete(kb, False)
            row = self._index.find(kb, key_hash(kb))
            if row >= 0 and self._index.is_visible(row):
                self._drop_row(row, journal_it=True)
                removed += 1
            removed += await self._purge_locked(kb + b" ")
        self._stats["deletes_total"] += 1
        if removed:
            await self._make_durable()
        return removed

    async def delete_prefix(self, prefix: str) -> int:
        pb = prefix.encode()
        if pb and not key_is_storable(pb):
            return 0
        async with self._mutate:
            removed = await self._purge_locked(pb)
        self._stats["purges_total"] += 1
        if removed:
            await self._make_durable()
        return removed

    async def clear(self) -> int:
        # The reset frees every block at once, so it is made durable before any put can
        # reuse one (lock order as in checkpoint(): persist, then mutate).
        async with self._persist:
            async with self._mutate:
                removed = self._index.entries
                self._record_delete(b"", True)
                self._reset()
                self._journal(journal.ClearRecord())
                if not self._closed:
                    await asyncio.shield(self._sync_locked())
        self._stats["purges_total"] += 1
        self._stats["purged_entries_total"] += removed
        return removed

    async def _make_durable(self) -> None:
        """Sync now, and finish the sync even if the caller is cancelled: a delete is
        durable before it returns (a PURGE's 200 must survive a crash right after it)."""
        if self._closed:
            return
        task = asyncio.ensure_future(self.sync())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _purge_locked(self, prefix: bytes) -> int:
        """Make every live key starting with ``prefix`` invisible now; reclaim later.

        Cancelled between windows, it still marks the rest and journals itself: what
        became invisible must stay gone after a restart.
        """
        self._record_delete(prefix, True)
        self._rules.append(prefix)
        index = self._index
        total = 0
        pos = 0
        cancelled = False
        try:
            end = len(index.arena)
            while pos < end:
                total += index.mark_prefix(prefix, pos, pos + PURGE_WINDOW)
                pos += PURGE_WINDOW
                if pos < end:
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if pos < len(index.arena):  # cancelled midway: finish in one go
                total += index.mark_prefix(prefix, pos, len(index.arena))
            if total:
                self._journal(journal.PurgeRecord(prefix))
                self._reap_wanted.set()
            if cancelled:  # no caller left to wait for durability: sync anyway
                self._spawn(self.sync())
            self._rules.remove(prefix)
            self._stats["purged_entries_total"] += total
        return total

    async def _drop_if_current(self, row: int, gen: int, counter: str | None) -> None:
        async with self._mutate:
            index = self._index
            if row < index.nrows and index.flags_of(row) and index.gen_of(row) == gen:
                if index.state_byte(row) == DEAD:
                    return
                self._drop_row(row, journal_it=True)
                if counter:
                    self._stats[counter] += 1

    # ===================================================================================
    # eviction and background work
    # ===================================================================================

    def _evict_one(self) -> bool:
        """Evict the lowest-scored of a few sampled visible rows. False if none found."""
        index = self._index
        nrows = index.nrows
        if not nrows or index.entries <= 0:
            return False
        now = _now()
        best = -1
        best_score: tuple[int, int] | None = None
        tries = 0
        found = 0
        while found < SAMPLE and tries < SAMPLE * 8:
            tries += 1
            row = random.randrange(nrows)
            if not index.is_visible(row):
                continue
            found += 1
            entry = index.entry(row)
            if entry.expires and entry.expires <= now:
                best = row
                break
            score = eviction_score(entry.freq, entry.atime, now)
            if best_score is None or score < best_score:
                best, best_score = row, score
        if best < 0:
            return False
        entry = index.entry(best)
        self._drop_row(best, journal_it=True)
        self._stats["evictions_total"] += 1
        self._stats["evicted_bytes_total"] += entry.orig_len
        return True

    def _wake_maintenance(self) -> None:
        self._wake = True

    _wake = False

    async def _maintain(self) -> None:
        interval = self._settings.sync_interval
        tick = min(0.1, interval)
        last_sync = time.monotonic()
        while not self._closed:
            await asyncio.sleep(tick)
            try:
                now = time.monotonic()
                if now - last_sync >= interval or self._sync_soon:
                    last_sync = now
                    if self._journal_buf or self._records_since_ckpt or self._unsynced_frees:
                        await self.sync()
                if (
                    self._ckpt_due
                    or self._records_since_ckpt >= CHECKPOINT_RECORDS
                    or self._journal_fill() >= CHECKPOINT_JOURNAL_FILL
                ):
                    await self.checkpoint()
                await self._compact_if_needed()
                await self._evict_if_needed()
                await self._expire_some()
                if now - self._last_frag_scan >= FRAG_SCAN_SECONDS:
                    self._last_frag_scan = now
                    await self._scan_fragmentation()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep maintaining; one failed step must not stop the rest
                log.exception("L2 maintenance step failed")

    def _index_budget(self) -> int:
        """Checkpoint slot bytes the index may use (the rest: header, block map)."""
        return self._geo.checkpoint_slot_size - self._geo.data_blocks - 2 * HEADER_SIZE

    def _index_live_bytes(self) -> int:
        """What the index needs in a checkpoint once freed key bytes are compacted away."""
        return self._index.checkpoint_bytes() - self._index.arena_dead

    async def _compact_locked(self) -> None:
        """Drop freed key bytes from the arena (caller holds the mutation lock)."""
        for _ in self._index.compact_steps():
            await asyncio.sleep(0)

    async def _evict_if_needed(self) -> None:
        # Only live index bytes count: evicting adds freed key bytes, which compaction
        # removes; counting them evicted everything on a small device.
        index_budget = self._index_budget()
        while not self._closed and (
            self._over(HIGH_WATERMARK)
            or self._index_pressure
            or self._index_live_bytes() > 0.9 * index_budget
        ):
            evicted = 0
            async with self._mutate:
                for _ in range(EVICT_BATCH):
                    if not (
                        self._over(LOW_WATERMARK) or self._index_live_bytes() > 0.8 * index_budget
                    ):
                        self._index_pressure = False
                        break
                    if not self._evict_one():
                        self._index_pressure = False
                        break
                    evicted += 1
            if not evicted or (not self._over(LOW_WATERMARK) and not self._index_pressure):
                break
            await asyncio.sleep(0)
        self._wake = False

    async def _expire_some(self) -> None:
        index = self._index
        if not index.nrows:
            return
        now = _now()
        start = self._expiry_cursor % index.nrows
        stop = min(index.nrows, start + EXPIRY_BATCH)
        victims = []
        for row in range(start, stop):
            if index.is_visible(row):
                expires = index.expires_of(row)
                if expires and expires <= now:
                    victims.append((row, index.gen_of(row)))
        self._expiry_cursor = stop
        if victims:
            async with self._mutate:
                for row, gen in victims:
                    if self._index is index and index.flags_of(row) and index.gen_of(row) == gen:
                        if index.is_visible(row):
                            self._drop_row(row, journal_it=True)
                            self._stats["expirations_total"] += 1

    async def _reaper(self) -> None:
        while not self._closed:
            await self._reap_wanted.wait()
            self._reap_wanted.clear()
            while self._index.dead and not self._closed:
                async with self._mutate:
                    rows = self._index.dead_rows(REAP_BATCH)
                    for row in rows:
                        self._reclaim(row)
                if not rows:
                    break
                await asyncio.sleep(0)

    async def _compact_if_needed(self) -> None:
        index = self._index
        dead = index.arena_dead
        # Half the arena freed, or an eighth of it once the index fills half of its slot.
        if dead < 4096 or (
            dead < len(index.arena) // 2
            and (
                dead < len(index.arena) // 8 or index.checkpoint_bytes() < self._index_budget() // 2
            )
        ):
            return
        async with self._mutate:
            if self._index is not index:
                return
            await self._compact_locked()

    async def _scan_fragmentation(self) -> None:
        """Largest free run and number of free runs, a window at a time (approximate under
        concurrent allocation, exact when idle)."""
        block_map = self._map
        largest = 0
        runs = 0
        prev_end = -1
        prev_len = 0
        pos = 0
        while pos < block_map.blocks:
            end = min(block_map.blocks, pos + FRAG_WINDOW)
            for start, length in block_map.free_runs(pos, end):
                merged = start == prev_end  # continues a run cut at the window edge
                total = length + prev_len if merged else length
                if not merged:
                    runs += 1
                largest = max(largest, total)
                prev_end = start + length
                prev_len = total
            pos = end
            await asyncio.sleep(0)
        self._largest_free_run = largest
        self._free_runs = runs

    # ===================================================================================
    # keys, stats, close
    # ===================================================================================

    def keys(self) -> Iterator[str]:
        index = self._index
        now = _now()
        items = list(index.live_keys_with_rows())
        for key, row in items:
            if index.flags_of(row) & FLAG_BAD:
                continue
            expires = index.expires_of(row)
            if expires and expires <= now:
                continue
            yield key.decode()

    def stats(self) -> dict[str, float]:
        geo = self._geo
        index = self._index
        block_map = self._map
        out = dict(self._stats)
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
            free_extents=float(self._free_runs),
            largest_free_extent_bytes=float(self._largest_free_run * geo.block_size),
            fragmentation=min(
                1.0,
                max(
                    0.0,
                    fragmentation_of(
                        block_map.free_blocks, min(self._largest_free_run, block_map.free_blocks)
                    ),
                ),
            ),
            hit_ratio=(out["hits_total"] / out["lookups_total"]) if out["lookups_total"] else 0.0,
            compression_ratio=(
                index.live_bytes / index.stored_bytes if index.stored_bytes else 1.0
            ),
            index_bytes=float(index.memory_bytes() + len(block_map.map)),
            journal_fill_ratio=self._journal_fill(),
            readers_active=float(sum(self._readers.values())),
            direct_io=1.0 if self._device.direct_io else 0.0,
            format_generation=float(self._sb.generation),
        )
        return out

    @property
    def direct_io_reason(self) -> str:
        return self._device.direct_io_reason

    @property
    def geometry(self) -> Geometry:
        return self._geo

    async def _drain(self) -> None:
        """Wait for background drops scheduled by reads (tests)."""
        while self._tasks:
            await asyncio.sleep(0.01)

    async def _reap_idle(self) -> None:
        """Wait until purged entries have all been reclaimed (tests and the CLI)."""
        while self._index.dead and not self._closed:
            self._reap_wanted.set()
            await asyncio.sleep(0.01)

    async def _abandon(self) -> None:
        """Stop as a crash would: nothing more is written, the lock is released (tests)."""
        self._closed = True
        tasks = [*self._tasks, *(t for t in (self._maintenance, self._reaper_task) if t)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pool.shutdown(wait=True)
        self._device.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for background in (self._maintenance, self._reaper_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        if self._tasks:  # drops scheduled by reads: let them finish, briefly
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Wait for puts and reads in flight, then persist everything.
        async with self._mutate:
            pass
        try:
            if self._records_since_ckpt or self._journal_buf:
                await self.checkpoint()
            await self.sync()
        finally:
            self._pool.shutdown(wait=True)
            self._device.close()
