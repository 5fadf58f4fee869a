"""The write path: admit, compress, allocate, write the extent, commit the index entry.

A put writes into blocks allocated as HELD (not yet owned), then commits the index entry
(and journals it) unless a delete that covers its key happened meanwhile
(:class:`DeleteLog`): nothing a delete removed reappears because a put was in flight.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

from cache.protocol import SliceData
from cache.rawdisk import codec
from cache.rawdisk.allocator import HELD
from cache.rawdisk.core import Core
from cache.rawdisk.index import DEAD, key_is_storable
from cache.rawdisk.journal import PutRecord
from cache.rawdisk.layout import (
    KIND_SLICE,
    RECORD_HEADER_SIZE,
    RecordHeader,
    extent_blocks,
    key_hash,
)
from cache.rawdisk.maintenance import EVICT_BATCH
from cache.rawdisk.persistence import Persistence
from cache.rawdisk.policy import HIGH_WATERMARK

# Puts are declined while the journal half is this full (deletes always fit).
JOURNAL_PUT_LIMIT = 0.9


class DeleteLog:
    """Deletes that happened while puts were in flight: a put registers when it starts and
    asks at commit whether a delete since then covers its key."""

    def __init__(self) -> None:
        self._epoch = 0
        self._log: list[tuple[int, bytes, bool]] = []
        self._inflight: Counter[int] = Counter()

    def begin_put(self) -> int:
        epoch = self._epoch
        self._inflight[epoch] += 1
        return epoch

    def end_put(self, epoch: int) -> None:
        left = self._inflight[epoch] - 1
        if left:
            self._inflight[epoch] = left
        else:
            del self._inflight[epoch]
            self._prune()

    def record(self, target: bytes, is_prefix: bool) -> None:
        self._epoch += 1
        if self._inflight:
            self._log.append((self._epoch, target, is_prefix))

    def deleted_since(self, epoch: int, kb: bytes) -> bool:
        for deleted_at, target, is_prefix in self._log:
            if deleted_at > epoch and (kb.startswith(target) if is_prefix else kb == target):
                return True
        return False

    def _prune(self) -> None:
        if not self._inflight:
            self._log.clear()
        elif self._log:
            oldest = min(self._inflight)
            self._log = [item for item in self._log if item[0] > oldest]


class WritePath:
    def __init__(
        self,
        core: Core,
        persist: Persistence,
        deletes: DeleteLog,
        admits: Callable[[bytes, int], bool],
        evict_one: Callable[[], bool],
        wake_maintenance: Callable[[], None],
    ) -> None:
        self.core = core
        self.tables = core.tables
        self.persist = persist
        self.deletes = deletes
        self._admits = admits
        self._evict_one = evict_one
        self._wake_maintenance = wake_maintenance
        self._compress = core.settings.enable_compression
        geo = core.geo
        self.max_payload = (
            min((1 << 32) - 1, geo.data_blocks * geo.block_size // 8) - RECORD_HEADER_SIZE - 4096
        )

    def _declined(self, counter: str | None = None) -> bool:
        stats = self.core.stats
        stats["puts_declined_total"] += 1
        if counter:
            stats[counter] += 1
        return False

    async def put(
        self,
        key: str,
        data: SliceData,
        expires_at: float | None,
        kind: int,
        compressible: bool | None,
    ) -> bool:
        core = self.core
        tables = self.tables
        if core.closed:
            return self._declined()
        kb = key.encode()
        if not key_is_storable(kb) or len(data) > self.max_payload:
            return self._declined()
        now = time.time()
        if expires_at is not None and expires_at <= now:
            return self._declined()
        expires = 0 if expires_at is None else min(math.ceil(expires_at), (1 << 32) - 1)
        h = key_hash(kb)
        if self.persist.journal_fill() > JOURNAL_PUT_LIMIT:
            self.persist.ckpt_due = True
            return self._declined()
        if not self._admits(kb, h):
            return self._declined("admission_rejects_total")
        compress = self._compress and compressible is not False and kind == KIND_SLICE
        # Registered before compression starts: a delete that covers this key while zstd
        # (or the write) runs in a worker thread must make the put drop itself at commit.
        start_epoch = self.deletes.begin_put()
        try:
            if compress:
                codec_id, payload, tried = await core.run(codec.encode, data, True)
                if tried and codec_id == 0:
                    core.stats["compression_skipped_total"] += 1
            else:
                codec_id, payload = 0, data
            nblocks = extent_blocks(len(kb), len(payload), core.geo.block_size)
            async with core.mutate:
                start = self._allocate(nblocks)
                gen = tables.next_gen
                tables.next_gen += 1
            if start < 0 and tables.pending_free_blocks >= nblocks and not core.closed:
                # Evicted space becomes reusable once its records are durable: sync now
                # rather than decline every put until the next periodic sync.
                await self.persist.sync()
                async with core.mutate:
                    start = self._allocate(nblocks)
            if start < 0:
                return self._declined("no_space_total")
            created = int(now)
            try:
                checksum = await core.run(
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
                core.stats["write_errors_total"] += 1
                core.warnings.warning("l2_write_failed", f"L2 write of {key!r} failed: {exc}")
                async with core.mutate:
                    tables.map.free(start, nblocks)
                return self._declined()
            async with core.mutate:
                if core.closed or self.deletes.deleted_since(start_epoch, kb):
                    tables.map.free(start, nblocks)
                    core.stats["discarded_puts_total"] += 1
                    return self._declined()
                index = tables.index
                row = index.find(kb, h)
                if row < 0 or index.state_byte(row) == DEAD:
                    if row >= 0:
                        tables.reclaim(row)
                    row = index.take_row()
                record = PutRecord(
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
                tables.put(record, replay=False)
                self.persist.journal(record)
        finally:
            self.deletes.end_put(start_epoch)
        stats = core.stats
        stats["writes_total"] += 1
        stats["written_bytes_total"] += len(data)
        stats["stored_bytes_written_total"] += len(payload)
        if codec_id:
            stats["compressed_writes_total"] += 1
        if core.over(HIGH_WATERMARK):
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
        core = self.core
        checksum = codec.checksum(payload)
        header = RecordHeader(
            codec=codec_id,
            kind=kind,
            key_len=len(kb),
            key_hash=h,
            gen=gen,
            format_id=core.format_id,
            stored_len=len(payload),
            orig_len=orig_len,
            payload_checksum=checksum,
            created=created,
        ).pack()
        body = payload if isinstance(payload, (bytes, memoryview)) else memoryview(payload)
        core.device.write_extent(
            [header + bytes(RECORD_HEADER_SIZE - len(header)) + kb, body],
            core.geo.block_offset(start),
        )
        return checksum

    def _allocate(self, nblocks: int) -> int:
        """Allocate (as HELD) a contiguous extent, evicting a little if needed.

        Blocks freed by an eviction become allocatable only after the next sync (see
        :meth:`Tables.free_extent`), so when space is short this evicts enough for the put
        to fit after that sync, asks for it soon, and declines this put.
        """
        tables = self.tables
        max_entries = self.core.geo.max_entries
        start = tables.map.allocate(nblocks, HELD)
        for _ in range(EVICT_BATCH):
            if start >= 0 and tables.index.live < max_entries:
                return start
            if start < 0 and tables.pending_free_blocks >= nblocks:
                break
            if not self._evict_one():
                break
            if start < 0:
                start = tables.map.allocate(nblocks, HELD)
        if start >= 0 and tables.index.live < max_entries:
            return start
        if start >= 0:
            tables.map.free(start, nblocks)
        self.persist.sync_soon = True
        return -1
