"""The write path: admit, compress, allocate, write the extent, commit the index entry.

A put writes into blocks allocated as HELD (not yet owned), then commits the index entry
(and journals it) unless a delete that covers its key happened meanwhile
(:class:`DeleteLog`): nothing a delete removed reappears because a put was in flight.
Puts go in batches (:meth:`WritePath.put_many`; a single put is a batch of one): each
phase runs for the whole batch, and the batch's journal records and index rows count
against the store's limits before they commit.

Length (~430 lines): the phases of a batch and the reservations they take and give back
are one protocol, read and changed together.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cache.protocol import PutRequest, SliceData
from cache.rawdisk import codec
from cache.rawdisk.allocator import HELD
from cache.rawdisk.core import Core
from cache.rawdisk.index import DEAD, key_is_storable
from cache.rawdisk.journal import PutRecord, put_record_size
from cache.rawdisk.layout import (
    KIND_META,
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


@dataclass(slots=True)
class _Put:
    """One admitted put on its way: what each phase of :meth:`WritePath.put_many` adds."""

    index: int  # in the batch
    request: PutRequest
    kb: bytes
    h: int
    expires: int
    created: int
    kind: int  # KIND_SLICE or KIND_META
    compress: bool
    start_epoch: int  # DeleteLog.begin_put
    codec_id: int = 0
    payload: SliceData = b""
    nblocks: int = 0
    start: int = -1
    gen: int = 0
    checksum: int = 0
    committed: bool = False
    journal_bytes: int = 0  # reserved in the journal until the put ends

    def __post_init__(self) -> None:
        self.payload = self.request.data


def _encode_all(payloads: list[SliceData]) -> list[tuple[int, SliceData, bool]]:
    """Worker thread: each payload compressed where it pays (codec.encode)."""
    return [codec.encode(payload, True) for payload in payloads]


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
        # What puts in flight (admitted, not yet ended) will add: journal bytes, and index
        # rows once they hold an extent. Admission and allocation count them.
        self._journal_reserved = 0
        self._rows_reserved = 0
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

    async def put_many(self, requests: Sequence[PutRequest]) -> list[bool]:
        """Store each of ``requests``; one answer each, in order.

        A batch crosses to the worker threads at most twice (compression of those that
        may compress, then every extent's write), not twice per put: a thread hop costs
        more than writing a small record, and under load the loop's busy GIL makes each
        one wait (issue 17: small cold misses with L2 were half as many as without).
        """
        stored = [False] * len(requests)
        puts: list[_Put] = []
        try:
            for index, request in enumerate(requests):
                put = self._admit(index, request)
                if put is not None:
                    puts.append(put)
            placed = await self._allocate_all(await self._encode(puts))
            await self._commit_all(await self._write_all(placed))
        finally:
            for put in puts:
                self.deletes.end_put(put.start_epoch)
                self._journal_reserved -= put.journal_bytes
                if put.start >= 0:
                    self._rows_reserved -= 1
        for put in puts:
            stored[put.index] = put.committed
        if puts and self.core.over(HIGH_WATERMARK):
            self._wake_maintenance()
        return stored

    def _admit(self, index: int, request: PutRequest) -> _Put | None:
        """The checks a put passes before any work, on the loop; None: declined.

        The batch's own puts count against the journal (and, at allocation, the index)
        before they commit: a batch may not overrun either, or a checkpoint would not fit
        its slot and acknowledged puts would be lost at the next restart (helper-70).
        """
        try:
            kb = request.key.encode()
            size = len(request.data)
            expires_at = request.expires_at
            expires = 0 if expires_at is None else min(math.ceil(expires_at), (1 << 32) - 1)
        except (TypeError, ValueError, OverflowError, UnicodeError):
            self._declined()  # not a put this store can make (never from the app)
            return None
        now = time.time()
        h = key_hash(kb)
        if (
            self.core.closed
            or not key_is_storable(kb)
            or size > self.max_payload
            or (expires_at is not None and expires_at <= now)
        ):
            self._declined()
            return None
        journal_bytes = put_record_size(len(kb))
        if self.persist.journal_fill(self._journal_reserved + journal_bytes) > JOURNAL_PUT_LIMIT:
            self.persist.ckpt_due = True
            self._declined()
            return None
        if not self._admits(kb, h):
            self._declined("admission_rejects_total")
            return None
        compress = self._compress and request.compressible is not False and request.kind == "slice"
        self._journal_reserved += journal_bytes
        # Registered before compression starts: a delete that covers this key while zstd
        # (or the write) runs in a worker thread must make the put drop itself at commit.
        kind = KIND_META if request.kind == "meta" else KIND_SLICE
        put = _Put(
            index, request, kb, h, expires, int(now), kind, compress, self.deletes.begin_put()
        )
        put.journal_bytes = journal_bytes
        return put

    async def _encode(self, puts: list[_Put]) -> list[_Put]:
        """Compression where it may pay, in one crossing; returns the puts still going."""
        trying = [put for put in puts if put.compress]
        if not trying:
            return puts
        try:
            encoded = await self.core.run(_encode_all, [put.request.data for put in trying])
        except RuntimeError:  # the worker pool is shut down: the store is closing
            for _ in trying:
                self._declined()
            return [put for put in puts if not put.compress]
        for put, (codec_id, payload, tried) in zip(trying, encoded, strict=True):
            put.codec_id, put.payload = codec_id, payload
            if tried and codec_id == 0:
                self.core.stats["compression_skipped_total"] += 1
        return puts

    async def _allocate_all(self, puts: list[_Put]) -> list[_Put]:
        """Extents for the puts (as HELD blocks); returns those that got one."""
        core, tables = self.core, self.tables
        block_size = core.geo.block_size
        async with core.mutate:
            for put in puts:
                put.nblocks = extent_blocks(len(put.kb), len(put.payload), block_size)
                put.start = self._allocate(put.nblocks)
                if put.start >= 0:
                    self._rows_reserved += 1
                put.gen = tables.next_gen
                tables.next_gen += 1
        short = [put for put in puts if put.start < 0]
        if short and tables.pending_free_blocks >= min(p.nblocks for p in short):
            if not core.closed:
                # Evicted space becomes reusable once its records are durable: sync now
                # rather than decline every put until the next periodic sync.
                await self.persist.sync()
                async with core.mutate:
                    for put in short:
                        put.start = self._allocate(put.nblocks)
                        if put.start >= 0:
                            self._rows_reserved += 1
        placed = []
        for put in puts:
            if put.start < 0:
                self._declined("no_space_total")
            else:
                placed.append(put)
        return placed

    async def _write_all(self, placed: list[_Put]) -> list[_Put]:
        """Every extent written in one crossing; returns the puts whose write succeeded."""
        if not placed:
            return placed
        try:
            results: list[int | BaseException] = await self.core.run(self._write_records, placed)
        except RuntimeError as error:  # the worker pool is shut down: nothing was written
            results = [error] * len(placed)
        written, failed = [], []
        for put, result in zip(placed, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(put)
                self.core.stats["write_errors_total"] += 1
                self.core.warnings.warning(
                    "l2_write_failed", f"L2 write of {put.request.key!r} failed: {result}"
                )
                self._declined()
            else:
                put.checksum = result
                written.append(put)
        if failed:
            async with self.core.mutate:
                for put in failed:
                    self.tables.map.free(put.start, put.nblocks)
                    put.start = -1
                    self._rows_reserved -= 1
        return written

    async def _commit_all(self, written: list[_Put]) -> None:
        core, tables = self.core, self.tables
        if not written:
            return
        stats = core.stats
        async with core.mutate:
            for put in written:
                if core.closed or self.deletes.deleted_since(put.start_epoch, put.kb):
                    tables.map.free(put.start, put.nblocks)
                    stats["discarded_puts_total"] += 1
                    self._declined()
                    continue
                index = tables.index
                row = index.find(put.kb, put.h)
                if row < 0 or index.state_byte(row) == DEAD:
                    if row >= 0:
                        tables.reclaim(row)
                    row = index.take_row()
                record = PutRecord(
                    row=row,
                    gen=put.gen,
                    checksum=put.checksum,
                    start=put.start,
                    nblocks=put.nblocks,
                    stored_len=len(put.payload),
                    orig_len=len(put.request.data),
                    expires=put.expires,
                    created=put.created,
                    codec=put.codec_id,
                    kind=put.kind,
                    key=put.kb,
                )
                tables.put(record, replay=False)
                self.persist.journal(record)
                put.committed = True
                stats["writes_total"] += 1
                stats["written_bytes_total"] += len(put.request.data)
                stats["stored_bytes_written_total"] += len(put.payload)
                if put.codec_id:
                    stats["compressed_writes_total"] += 1

    def _write_records(self, puts: list[_Put]) -> list[int | BaseException]:
        """Worker thread: each put's extent written; its checksum, or why it failed."""
        results: list[int | BaseException] = []
        for put in puts:
            try:
                results.append(
                    self._write_record(
                        put.kb,
                        put.h,
                        put.gen,
                        put.payload,
                        len(put.request.data),
                        put.codec_id,
                        put.kind,
                        put.created,
                        put.start,
                    )
                )
            except Exception as exc:  # that put's failure only: its blocks are freed
                results.append(exc)
        return results

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
            if start >= 0 and tables.index.live + self._rows_reserved < max_entries:
                return start
            if start < 0 and tables.pending_free_blocks >= nblocks:
                break
            if not self._evict_one():
                break
            if start < 0:
                start = tables.map.allocate(nblocks, HELD)
        if start >= 0 and tables.index.live + self._rows_reserved < max_entries:
            return start
        if start >= 0:
            tables.map.free(start, nblocks)
        self.persist.sync_soon = True
        return -1
