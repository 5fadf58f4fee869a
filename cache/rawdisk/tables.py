"""The index and the block map, and the pure rules that change them (no I/O, no awaits).

Every change of an open store, live or replayed from the journal, goes through here, so a
journal record means the same thing at both times: the live path applies a record and
journals it; recovery applies the journaled records in order. Replaying any prefix of a
journal on top of the checkpoint it follows gives the state a crash at that point must
leave (tests/rawdisk/test_tables.py checks it against a model with hypothesis).

Freed extents are not always allocatable at once:

* while ``defer_frees`` is set (an open store; not while loading, where every replayed
  record is durable), blocks a record frees stay HELD until that record is durable
  (``take_frees`` / ``release_frees`` around a sync): otherwise a crash could replay an
  index entry naming blocks another key has overwritten;
* blocks a reader is copying stay HELD until the reader is done (``end_read``).
"""

from __future__ import annotations

from collections import Counter

from cache.rawdisk import journal
from cache.rawdisk.allocator import HELD, USED, BlockMap
from cache.rawdisk.index import DEAD, Entry, Index
from cache.rawdisk.layout import key_hash


class Tables:
    """Index + block map + the bookkeeping of extents not yet allocatable."""

    def __init__(self, data_blocks: int, stats: dict[str, float]) -> None:
        self.index = Index()
        self.map = BlockMap(data_blocks)
        self.next_gen = 1
        self.stats = stats  # shared counters: replay_conflicts_total, reclaimed_entries_total
        self.readers: Counter[int] = Counter()  # start -> reads in flight
        self.held_by_readers: dict[int, int] = {}  # start -> nblocks freed while being read
        self.reading: dict[int, int] = {}  # start -> nblocks of extents being read
        # Extents freed by records not yet durable (HELD until the next sync/checkpoint).
        self.unsynced_frees: list[tuple[int, int]] = []
        # Taken by the sync or checkpoint in flight (one at a time: the persist lock).
        self.syncing_frees: list[tuple[int, int]] = []
        self.pending_free_blocks = 0  # blocks of both lists
        self.defer_frees = False  # immediate while loading (replayed records are durable)

    def load(self, index: Index, block_map: bytes | bytearray, next_gen: int) -> None:
        """Start from a checkpoint's index and block map."""
        self.index = index
        self.map = BlockMap(self.map.blocks, block_map)
        self.next_gen = next_gen

    # --- records -------------------------------------------------------------------------

    def apply(self, record: journal.Record) -> None:
        """Replay one journaled record."""
        if isinstance(record, journal.PutRecord):
            self.put(record, replay=True)
        elif isinstance(record, journal.DeleteRecord):
            index = self.index
            if (
                record.row < index.nrows
                and index.flags_of(record.row)
                and index.gen_of(record.row) == record.gen
            ):
                self.drop(record.row)
        elif isinstance(record, journal.PurgeRecord):
            index = self.index
            index.mark_prefix(record.prefix, 0, len(index.arena))
            self.reclaim_all_dead()
        else:
            self.reset()

    def put(self, rec: journal.PutRecord, replay: bool) -> bool:
        """Index a put. Live (``replay=False``), its blocks were allocated HELD by the
        caller and become USED; replayed, they are claimed from the map, and a record whose
        blocks are not free (a conflict) is skipped: False."""
        index = self.index
        h = key_hash(rec.key)
        row = index.find(rec.key, h)
        if row >= 0 and index.state_byte(row) == DEAD:
            self.reclaim(row)
            row = -1
        if replay:
            if row >= 0 and row != rec.row:
                self.drop(row)
                row = -1
            if row < 0 and rec.row < index.nrows and index.flags_of(rec.row):
                self.drop(rec.row)
            if not self.map.is_free(rec.start, rec.nblocks):
                if row >= 0:
                    self.drop(row)
                self.stats["replay_conflicts_total"] += 1
                return False
            self.map.claim(rec.start, rec.nblocks)
            self.next_gen = max(self.next_gen, rec.gen + 1)
        else:
            self.map.mark(rec.start, rec.nblocks, USED)
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
            self.free_extent(old_start, old_blocks)
        else:
            index.insert(rec.key, entry, rec.row)
        return True

    def drop(self, row: int) -> journal.DeleteRecord:
        """Remove a row and free its extent; returns the record a live caller journals."""
        gen = self.index.gen_of(row)
        start, nblocks = self.index.remove(row)
        self.free_extent(start, nblocks)
        return journal.DeleteRecord(row, gen)

    def reclaim(self, row: int) -> None:
        """Free a purged row (its PURGE record is already in the journal)."""
        start, nblocks = self.index.remove(row)
        self.free_extent(start, nblocks)
        self.stats["reclaimed_entries_total"] += 1

    def reclaim_all_dead(self) -> None:
        while self.index.dead:
            rows = self.index.dead_rows(10_000)
            if not rows:
                break
            for row in rows:
                self.reclaim(row)

    def reset(self) -> None:
        """Forget every entry (CLEAR)."""
        self.index = Index()
        self.map.clear_used()
        # Extents being read stay unallocatable until their reader is done.
        for start, nblocks in self.reading.items():
            # Already HELD (freed, waiting for a sync): not counted free, released later.
            if start not in self.held_by_readers and self.map.map[start] != HELD:
                self.map.mark(start, nblocks, HELD)
                self.map.free_blocks -= nblocks
                self.held_by_readers[start] = nblocks

    # --- freed extents -------------------------------------------------------------------

    def free_extent(self, start: int, nblocks: int) -> None:
        if self.defer_frees:
            # Not reusable until the record that frees it is durable: otherwise a crash
            # could replay an index entry naming blocks another key has overwritten.
            self.map.mark(start, nblocks, HELD)
            self.unsynced_frees.append((start, nblocks))
            self.pending_free_blocks += nblocks
            return
        if self.readers.get(start):
            self.map.mark(start, nblocks, HELD)
            self.held_by_readers[start] = nblocks
        else:
            self.map.free(start, nblocks)

    def take_frees(self) -> list[tuple[int, int]]:
        frees = self.unsynced_frees
        self.unsynced_frees = []
        self.syncing_frees = frees
        return frees

    def release_frees(self, frees: list[tuple[int, int]]) -> None:
        """The records freeing these extents are durable now: make them allocatable."""
        self.syncing_frees = []
        for start, nblocks in frees:
            self.pending_free_blocks -= nblocks
            if self.readers.get(start):
                self.held_by_readers[start] = nblocks
            else:
                self.map.free(start, nblocks)

    def keep_frees(self, frees: list[tuple[int, int]]) -> None:
        """A sync failed or was cut short: these stay pending for the next one."""
        self.syncing_frees = []
        self.unsynced_frees[:0] = frees

    # --- readers -------------------------------------------------------------------------

    def begin_read(self, start: int, nblocks: int) -> None:
        self.readers[start] += 1
        self.reading[start] = nblocks

    def end_read(self, start: int) -> None:
        left = self.readers[start] - 1
        if left > 0:
            self.readers[start] = left
            return
        del self.readers[start]
        self.reading.pop(start, None)
        nblocks = self.held_by_readers.pop(start, None)
        if nblocks is not None:
            self.map.free(start, nblocks)
