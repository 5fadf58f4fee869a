"""Journal and checkpoints: what makes the tables survive a crash (FORMAT.md 3.2 to 3.4).

Records are buffered in memory and written at the next sync: an fdatasync of the data
first, so a durable journal record never names data that is not on disk. Extents a
record frees become allocatable only once it is durable. A checkpoint hashes and writes a
copy of the index, reads it back before its header is written, and never replaces the
newest verified checkpoint.
"""

from __future__ import annotations

import asyncio
import time

from cache.rawdisk import journal
from cache.rawdisk.checkpoint import (
    HEADER_SIZE,
    CheckpointHeader,
    sections_match,
    write_sections,
)
from cache.rawdisk.core import Core

# Checkpoint when this many journal records accumulated (bounds replay time at restart)
# or the journal half is this full.
CHECKPOINT_RECORDS = 100_000
CHECKPOINT_JOURNAL_FILL = 0.5


class Persistence:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.ckpt_seq = 0
        # The slot holding the newest verified checkpoint: the next one goes to the other
        # slot, and a failed one leaves this one (and the journal half it names) untouched.
        self.good_slot = 0
        self.epoch = 1
        self.journal_pos = 0
        self.journal_seq = 0
        self._buf: list[bytes] = []
        self._buf_bytes = 0
        self.records_since_ckpt = 0
        self.ckpt_due = False
        self.sync_soon = False

    # --- journal -------------------------------------------------------------------------

    def journal(self, record: journal.Record) -> None:
        core = self.core
        raw = journal.encode(record, self.epoch, self.journal_seq, core.format_id)
        self.journal_seq += 1
        self._buf.append(raw)
        self._buf_bytes += len(raw)
        self.records_since_ckpt += 1
        core.stats["journal_records_total"] += 1
        core.stats["journal_bytes_total"] += len(raw)

    @property
    def buffered(self) -> bool:
        """Are records waiting for the next sync?"""
        return bool(self._buf)

    def journal_fill(self, extra: int = 0) -> float:
        """The current journal half's fill, with ``extra`` bytes still to come."""
        return (self.journal_pos + self._buf_bytes + extra) / self.core.geo.journal_half_size

    def _take_journal(self) -> tuple[bytes, int, int]:
        """The buffered records that fit in the current half, and where they go."""
        geo = self.core.geo
        data = b"".join(self._buf)
        self._buf = []
        self._buf_bytes = 0
        room = geo.journal_half_size - self.journal_pos
        if len(data) > room:
            # Cut at a record boundary; the rest is covered by the checkpoint that a full
            # journal forces (losing a suffix is the same as crashing before the sync).
            cut = 0
            for _end, _e, _s, _r in journal.scan(data[:room], self.core.format_id, None, None):
                cut = _end
            data = data[:cut]
            self.ckpt_due = True
        offset = geo.journal_half(self.epoch) + self.journal_pos
        self.journal_pos += len(data)
        return data, offset, len(data)

    # --- sync ----------------------------------------------------------------------------

    async def sync(self) -> None:
        """Make every change so far durable: data, then the journal records naming it."""
        async with self.core.persist:
            await self.sync_locked()

    async def sync_locked(self) -> None:
        core = self.core
        device = core.device
        if device.fd < 0:
            return
        data, offset, _length = self._take_journal()
        # Frees named by records that a full journal cut off wait for the checkpoint.
        frees = [] if self.ckpt_due else core.tables.take_frees()
        self.sync_soon = False
        started = time.perf_counter()

        def work() -> None:
            device.sync_data()
            if data:
                device.pwrite(data, offset)
            device.sync_meta()

        try:
            await core.run(work)
        except BaseException:
            core.tables.keep_frees(frees)
            raise
        core.tables.release_frees(frees)
        elapsed = time.perf_counter() - started
        core.stats["journal_syncs_total"] += 1
        core.stats["journal_sync_seconds_total"] += elapsed
        core.stats["journal_sync_seconds_last"] = elapsed

    async def make_durable(self) -> None:
        """Sync now, and finish the sync even if the caller is cancelled: a delete is
        durable before it returns (a PURGE's 200 must survive a crash right after it)."""
        core = self.core
        if core.closed:
            return
        task = asyncio.ensure_future(self.sync())
        core.tasks.add(task)
        task.add_done_callback(core.tasks.discard)
        await asyncio.shield(task)

    # --- checkpoints ---------------------------------------------------------------------

    def write_checkpoint_sync(self, journal_epoch: int) -> None:
        """Write a full checkpoint into the next slot, durably (startup only)."""
        core = self.core
        seq = self.ckpt_seq + 1
        slot_number = 1 - self.good_slot
        slot = core.geo.checkpoint_slot(slot_number)
        views = core.tables.index.sections()
        try:
            sections, map_len = write_sections(
                core.device.pwrite, slot, core.geo.checkpoint_slot_size, views, core.tables.map.map
            )
        finally:
            for view in views:
                if isinstance(view, memoryview):
                    view.release()
        header = self._header(seq, journal_epoch, sections, map_len)
        core.device.sync_meta()
        core.device.pwrite(header.pack(), slot)
        core.device.sync_meta()
        self.ckpt_seq = seq
        self.good_slot = slot_number

    def _header(
        self,
        seq: int,
        journal_epoch: int,
        sections: tuple[tuple[int, int], ...],
        map_len: int,
    ) -> CheckpointHeader:
        tables = self.core.tables
        return CheckpointHeader(
            format_id=self.core.format_id,
            seq=seq,
            journal_epoch=journal_epoch,
            next_gen=tables.next_gen,
            created=time.time(),
            counters=tables.index.counters(),
            map_raw_len=map_len,
            sections=sections,
        )

    async def checkpoint(self) -> None:
        """Write the whole index to the next checkpoint slot and start a new journal epoch.

        Crash-ordered (FORMAT.md 3.4): sections written from a snapshot and read back
        verified, all under the mutation lock (so the snapshot and the epoch switch are one
        point in the journal); then data fdatasync, the old epoch's tail, fdatasync, the
        header, fdatasync. A checkpoint that does not verify writes no header and does not
        move the journal to a new epoch: the slot alternation advances only past a verified
        checkpoint, so the last good one (and the journal half it names) is never reused.
        """
        core = self.core
        tables = core.tables
        started = time.perf_counter()
        async with core.persist:
            async with core.mutate:
                if tables.index.arena_dead and (
                    tables.index.checkpoint_bytes() > 0.8 * core.index_budget()
                ):
                    await core.compact_index()  # no freed key bytes where room is short
                seq = self.ckpt_seq + 1
                slot_number = 1 - self.good_slot
                slot = core.geo.checkpoint_slot(slot_number)
                views = tables.index.sections()
                block_map = bytes(tables.map.map)  # reads free HELD blocks without the lock
                try:
                    sections, map_len = await core.run(
                        self._write_verified_sections, slot, views, block_map
                    )
                except ValueError as exc:
                    self._failed(f"{exc} (evicting to shrink the index)")
                    core.index_pressure = True
                    return
                finally:
                    for view in views:
                        if isinstance(view, memoryview):
                            view.release()
                if not sections:
                    self._failed("sections did not read back as written")
                    return
                tail, tail_offset, _ = self._take_journal()
                frees = tables.take_frees()  # the snapshot names none of these extents
                new_epoch = self.epoch + 1
                header = self._header(seq, new_epoch, sections, map_len)
                self.epoch = new_epoch
                self.journal_pos = 0
                self.journal_seq = 0
                self.records_since_ckpt = 0
                self.ckpt_due = False

            packed = header.pack()

            def finish() -> None:
                device = core.device
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
                await core.run(finish)
            except BaseException:
                tables.keep_frees(frees)
                raise
            tables.release_frees(frees)
            self.ckpt_seq = seq
            self.good_slot = slot_number
        elapsed = time.perf_counter() - started
        core.stats["checkpoints_total"] += 1
        core.stats["checkpoint_seconds_total"] += elapsed
        core.stats["checkpoint_seconds_last"] = elapsed
        core.stats["checkpoint_bytes_last"] = float(HEADER_SIZE + header.payload_bytes)

    def _write_verified_sections(
        self, slot: int, views: list[bytes | bytearray | memoryview], block_map: bytes
    ) -> tuple[tuple[tuple[int, int], ...], int]:
        """Worker thread: write a checkpoint's sections, fdatasync, read them back.

        Returns ((), 0) when they do not read back with the digests computed while writing.
        """
        device = self.core.device
        sections, map_len = write_sections(
            device.pwrite, slot, self.core.geo.checkpoint_slot_size, views, block_map
        )
        device.sync_meta()
        if not sections_match(device.fd, slot, sections):
            return (), 0
        return sections, map_len

    def _failed(self, reason: str) -> None:
        self.core.stats["checkpoint_failures_total"] += 1
        self.core.warnings.error("l2_checkpoint_skipped", f"L2 checkpoint skipped: {reason}")
