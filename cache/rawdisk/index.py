"""The in-memory index: key -> extent, packed for ~150 B per entry and a fast restart.

A Python ``dict[str, tuple]`` costs ~250 B per entry for 70-character keys (measured with
tracemalloc), and rebuilding it from disk is a Python loop. Instead everything lives in
flat buffers that a checkpoint writes and a restart reads back with one ``frombytes``:

* ``rows``: one 64-byte :data:`ROW` struct per entry (hash, generation, checksum, extent,
  lengths, expiry, timestamps, codec, kind, frequency, flags);
* ``key_off``: ``array('Q')``, where each row's key starts in the arena;
* ``arena``: keys as ``<state byte><key bytes>\\x1e<row as 8 hex digits>``. The state byte
  is ``\\n`` (live), ``\\x01`` (purged, blocks not yet reclaimed) or ``\\x00`` (free). Keys
  never contain control characters, so ``arena.count(b"\\n" + prefix)`` counts the live
  keys with a prefix and ``replace`` marks them purged, both at C speed;
* ``shards``: 256 open-addressing tables (``array('i')``, linear probing, row + 1, 0 =
  empty, backward-shift deletion so there are no tombstones). Growing one shard rehashes
  1/256 of the entries, so no single insert ever stalls the event loop for long.

Over ~400 lines on purpose: one data structure whose rows, arena, tables and sections
share private offsets and invariants; split, each part would reach into the others.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

ROW = struct.Struct("<QQQQIIIIIIHBBBB2x")
ROW_SIZE = ROW.size
assert ROW_SIZE == 64

# Field offsets inside a row, for single-field updates.
_OFF_HASH = 0
_OFF_GEN = 8
_OFF_START = 24
_OFF_NBLOCKS = 32
_OFF_EXPIRES = 44
_OFF_ATIME = 52
_OFF_FREQ = 64 - 2 - 2  # freq byte
_OFF_FLAGS = 64 - 2 - 1
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

FLAG_USED = 1
FLAG_BAD = 2  # failed verification: invisible, deletion scheduled

LIVE = 0x0A
DEAD = 0x01
FREE = 0x00
TERM = b"\x1e"
NSHARDS = 256
_SHARD_MASK = NSHARDS - 1
MIN_SHARD = 8
MAX_KEY_BYTES = 4096
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_LIVE_KEYS = re.compile(rb"\n([^\x1e]*)\x1e")
_RECORD = re.compile(rb"([\n\x01])([^\x1e]*)\x1e([0-9a-f]{8})")
_RECORD_START = re.compile(rb"[\n\x01\x00]")


def key_is_storable(key: bytes) -> bool:
    return 0 < len(key) <= MAX_KEY_BYTES and _CONTROL.search(key) is None


@dataclass(slots=True)
class Entry:
    """One row, unpacked."""

    key_hash: int
    gen: int
    checksum: int
    start: int
    nblocks: int
    stored_len: int
    orig_len: int
    expires: int
    created: int
    atime: int
    key_len: int
    codec: int
    kind: int
    freq: int
    flags: int

    def pack(self) -> bytes:
        return ROW.pack(
            self.key_hash,
            self.gen,
            self.checksum,
            self.start,
            self.nblocks,
            self.stored_len,
            self.orig_len,
            self.expires,
            self.created,
            self.atime,
            self.key_len,
            self.codec,
            self.kind,
            self.freq,
            self.flags,
        )


class Index:
    def __init__(self) -> None:
        self.rows = bytearray()
        self.key_off = array("Q")
        self.arena = bytearray()
        self.free_rows = array("I")
        self.shards = [array("i", bytes(4 * MIN_SHARD)) for _ in range(NSHARDS)]
        self.shard_used = array("I", bytes(4 * NSHARDS))
        self.live = 0  # rows in use (including purged rows not yet reclaimed)
        self.dead = 0  # rows purged, blocks not yet reclaimed
        self.arena_dead = 0  # arena bytes of freed records
        self.live_bytes = 0
        self.stored_bytes = 0
        self._dead_cursor = 0

    # --- sizes -------------------------------------------------------------------------

    @property
    def nrows(self) -> int:
        return len(self.rows) // ROW_SIZE

    @property
    def entries(self) -> int:
        return self.live - self.dead

    def checkpoint_bytes(self) -> int:
        """Bytes this index needs in a checkpoint slot (the block map excluded)."""
        return (
            len(self.rows)
            + 8 * len(self.key_off)
            + len(self.arena)
            + 4 * len(self.free_rows)
            + 4 * sum(map(len, self.shards))  # in C: maintenance asks every tick
            + 8 * NSHARDS
        )

    def memory_bytes(self) -> int:
        return self.checkpoint_bytes()

    # --- rows --------------------------------------------------------------------------

    def entry(self, row: int) -> Entry:
        return Entry(*ROW.unpack_from(self.rows, row * ROW_SIZE))

    def gen_of(self, row: int) -> int:
        return int(_U64.unpack_from(self.rows, row * ROW_SIZE + _OFF_GEN)[0])

    def hash_of(self, row: int) -> int:
        return int(_U64.unpack_from(self.rows, row * ROW_SIZE + _OFF_HASH)[0])

    def flags_of(self, row: int) -> int:
        return self.rows[row * ROW_SIZE + _OFF_FLAGS]

    def extent_of(self, row: int) -> tuple[int, int]:
        start, nblocks = struct.unpack_from("<QI", self.rows, row * ROW_SIZE + _OFF_START)
        return int(start), int(nblocks)

    def expires_of(self, row: int) -> int:
        return int(_U32.unpack_from(self.rows, row * ROW_SIZE + _OFF_EXPIRES)[0])

    def set_flag(self, row: int, flag: int) -> None:
        self.rows[row * ROW_SIZE + _OFF_FLAGS] |= flag

    def touch(self, row: int, now: int) -> None:
        base = row * ROW_SIZE
        _U32.pack_into(self.rows, base + _OFF_ATIME, now)
        freq = self.rows[base + _OFF_FREQ]
        if freq < 255:
            self.rows[base + _OFF_FREQ] = freq + 1

    def key_of(self, row: int) -> bytes:
        off = self.key_off[row]
        length = self.rows[row * ROW_SIZE + 56] | self.rows[row * ROW_SIZE + 57] << 8
        return bytes(self.arena[off : off + length])

    def is_visible(self, row: int) -> bool:
        """In use, not purged, not flagged bad."""
        if self.rows[row * ROW_SIZE + _OFF_FLAGS] != FLAG_USED:
            return False
        return self.arena[self.key_off[row] - 1] == LIVE

    def expired_rows(self, start: int, stop: int, now: int) -> list[int]:
        """Visible rows in [start, stop) with an expiry (not 0) at or before ``now``.

        The expiry words are read in one pass in C (a strided view of the rows), so Python
        runs only for the expired rows: the row-by-row loop this replaces held the event
        loop for milliseconds on every maintenance tick once the index had many rows."""
        if sys.byteorder == "little":
            step = ROW_SIZE // 4
            with memoryview(self.rows) as raw, raw.cast("I") as words:
                expiry = words[start * step + _OFF_EXPIRES // 4 : stop * step : step].tolist()
            if min(filter(None, expiry), default=now + 1) > now:
                return []  # the usual case, decided in C: nothing expired yet
            candidates = [start + i for i, e in enumerate(expiry) if 0 < e <= now]
        else:  # the rows are little-endian
            candidates = [r for r in range(start, stop) if 0 < self.expires_of(r) <= now]
        return [row for row in candidates if self.is_visible(row)]

    def state_byte(self, row: int) -> int:
        return self.arena[self.key_off[row] - 1]

    # --- table -------------------------------------------------------------------------

    def find(self, key: bytes, h: int) -> int:
        """Row holding ``key`` (live, purged or bad), or -1."""
        table = self.shards[h & _SHARD_MASK]
        mask = len(table) - 1
        i = (h >> 8) & mask
        rows = self.rows
        arena = self.arena
        key_off = self.key_off
        wanted = key + TERM
        span = len(wanted)
        while True:
            v = table[i]
            if v == 0:
                return -1
            r = v - 1
            if _U64.unpack_from(rows, r * ROW_SIZE)[0] == h:
                off = key_off[r]
                if arena[off : off + span] == wanted:
                    return r
            i = (i + 1) & mask

    def _table_insert(self, h: int, row: int) -> None:
        s = h & _SHARD_MASK
        if (self.shard_used[s] + 1) * 2 > len(self.shards[s]):
            self._grow(s)
        table = self.shards[s]
        mask = len(table) - 1
        i = (h >> 8) & mask
        while table[i] != 0:
            i = (i + 1) & mask
        table[i] = row + 1
        self.shard_used[s] += 1

    def _grow(self, s: int) -> None:
        old = self.shards[s]
        new = array("i", bytes(8 * len(old)))
        mask = len(new) - 1
        for v in old:
            if v:
                i = (self.hash_of(v - 1) >> 8) & mask
                while new[i] != 0:
                    i = (i + 1) & mask
                new[i] = v
        self.shards[s] = new

    def _table_delete(self, h: int, row: int) -> None:
        s = h & _SHARD_MASK
        table = self.shards[s]
        mask = len(table) - 1
        i = (h >> 8) & mask
        target = row + 1
        while table[i] != target:
            if table[i] == 0:
                return  # not present
            i = (i + 1) & mask
        # Backward-shift deletion: pull later members of the cluster into the hole.
        j = i
        while True:
            j = (j + 1) & mask
            v = table[j]
            if v == 0:
                break
            home = (self.hash_of(v - 1) >> 8) & mask
            # Move v into the hole at i unless its home lies cyclically in (i, j].
            if (i < j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                table[i] = v
                i = j
        table[i] = 0
        self.shard_used[s] -= 1

    # --- mutations -----------------------------------------------------------------------

    def take_row(self) -> int:
        """A free row index (lazy free list: skip entries that replay has since reused)."""
        while self.free_rows:
            r = self.free_rows.pop()
            if r < self.nrows and not self.rows[r * ROW_SIZE + _OFF_FLAGS] & FLAG_USED:
                return r
        return self.nrows

    def insert(self, key: bytes, entry: Entry, row: int) -> None:
        """Place a new key at ``row`` (from :meth:`take_row`, or a journal record)."""
        if row >= self.nrows:
            first_new = self.nrows
            self.rows.extend(bytes((row + 1 - first_new) * ROW_SIZE))
            self.key_off.extend([0] * (row + 1 - first_new))
            # Rows skipped over (a replayed row number beyond the end) are free.
            self.free_rows.extend(range(first_new, row))
        base = row * ROW_SIZE
        if self.rows[base + _OFF_FLAGS] & FLAG_USED:
            raise ValueError(f"row {row} is in use")
        self.arena += b"\n"
        self.key_off[row] = len(self.arena)
        self.arena += key + TERM + b"%08x" % row
        entry.flags = FLAG_USED
        entry.key_len = len(key)
        ROW.pack_into(self.rows, base, *_fields(entry))
        self._table_insert(entry.key_hash, row)
        self.live += 1
        self.live_bytes += entry.orig_len
        self.stored_bytes += entry.stored_len

    def replace(self, row: int, entry: Entry) -> tuple[int, int]:
        """New extent for a live key; returns the old (start, nblocks) to free."""
        old = self.entry(row)
        entry.flags = FLAG_USED
        entry.key_len = old.key_len
        ROW.pack_into(self.rows, row * ROW_SIZE, *_fields(entry))
        self.live_bytes += entry.orig_len - old.orig_len
        self.stored_bytes += entry.stored_len - old.stored_len
        return old.start, old.nblocks

    def remove(self, row: int) -> tuple[int, int]:
        """Forget a row; returns its (start, nblocks) for the caller to free."""
        old = self.entry(row)
        self._table_delete(old.key_hash, row)
        off = self.key_off[row]
        if self.arena[off - 1] == DEAD:
            self.dead -= 1
        self.arena[off - 1] = FREE
        self.arena_dead += old.key_len + 10
        self.rows[row * ROW_SIZE + _OFF_FLAGS] = 0
        self.free_rows.append(row)
        self.live -= 1
        self.live_bytes -= old.orig_len
        self.stored_bytes -= old.stored_len
        return old.start, old.nblocks

    # --- prefixes ----------------------------------------------------------------------

    def mark_prefix(self, prefix: bytes, start: int, end: int) -> int:
        """Mark live keys starting with ``prefix`` whose state byte is in [start, end) purged.

        Returns how many were marked. ``prefix`` may be empty (everything).
        """
        needle = b"\n" + prefix
        end = min(end, len(self.arena))
        if start >= end:
            return 0
        # A match starting before ``end`` may run past it by len(prefix) bytes.
        count = self.arena.count(needle, start, end + len(prefix))
        if count:
            chunk = bytes(self.arena[start : end + len(prefix)])
            marked = chunk.replace(needle, b"\x01" + prefix)
            self.arena[start:end] = marked[: end - start]
            self.dead += count
        return count

    def count_prefix(self, prefix: bytes) -> int:
        return self.arena.count(b"\n" + prefix)

    def dead_rows(self, limit: int) -> list[int]:
        """Up to ``limit`` rows purged but not reclaimed yet."""
        out: list[int] = []
        arena = self.arena
        # Resume where the last batch stopped, so reclaiming N rows is O(arena), not O(N * arena).
        pos = arena.find(b"\x01", self._dead_cursor)
        if pos < 0:
            pos = arena.find(b"\x01")
        while pos >= 0 and len(out) < limit:
            term = arena.find(TERM, pos + 1)
            out.append(int(arena[term + 1 : term + 9], 16))
            self._dead_cursor = term
            pos = arena.find(b"\x01", term + 9)
        return out

    def live_keys(self) -> Iterator[bytes]:
        for match in _LIVE_KEYS.finditer(self.arena):
            yield match.group(1)

    def live_keys_with_rows(self, prefix: bytes = b"") -> Iterator[tuple[bytes, int]]:
        pattern = re.compile(b"\n(" + re.escape(prefix) + rb"[^\x1e]*)\x1e([0-9a-f]{8})")
        for match in pattern.finditer(self.arena):
            yield match.group(1), int(match.group(2), 16)

    # --- arena compaction --------------------------------------------------------------

    def compact_steps(self, window: int = 64 << 10) -> Iterator[None]:
        """Rewrite the arena without freed records, a window at a time.

        The caller must not mutate the index until the generator is exhausted; lookups
        may run between steps (they keep using the old arena until the final swap).
        """
        arena = self.arena
        new = bytearray()
        new_off = array("Q", self.key_off)
        pos = 0
        while pos < len(arena):
            end = min(len(arena), pos + window)
            boundary = _RECORD_START.search(arena, end)
            end = boundary.start() if boundary else len(arena)
            for match in _RECORD.finditer(arena, pos, end):
                row = int(match.group(3), 16)
                new += match.group(1)
                new_off[row] = len(new)
                new += match.group(2) + TERM + match.group(3)
            pos = end
            yield
        self.arena = new
        self.key_off = new_off
        self.arena_dead = 0
        self._dead_cursor = 0

    # --- persistence -------------------------------------------------------------------

    def sections(self) -> list[bytes | bytearray | memoryview]:
        caps = array("I", [len(s) for s in self.shards])
        return [
            memoryview(self.rows),
            memoryview(self.key_off).cast("B"),
            memoryview(self.arena),
            memoryview(self.free_rows).cast("B"),
            memoryview(caps).cast("B"),
            memoryview(self.shard_used).cast("B"),
            *[memoryview(s).cast("B") for s in self.shards],
        ]

    @classmethod
    def from_sections(
        cls,
        rows: bytes,
        key_off: bytes,
        arena: bytes,
        free_rows: bytes,
        caps: bytes,
        shard_used: bytes,
        tables: bytes,
        counters: tuple[int, int, int, int, int],
    ) -> Index:
        index = cls()
        index.rows = bytearray(rows)
        index.key_off = array("Q")
        index.key_off.frombytes(key_off)
        index.arena = bytearray(arena)
        index.free_rows = array("I")
        index.free_rows.frombytes(free_rows)
        capacities = array("I")
        capacities.frombytes(caps)
        index.shard_used = array("I")
        index.shard_used.frombytes(shard_used)
        shards = []
        pos = 0
        for cap in capacities:
            table = array("i")
            table.frombytes(tables[pos : pos + 4 * cap])
            shards.append(table)
            pos += 4 * cap
        if len(shards) != NSHARDS or len(index.key_off) != index.nrows:
            raise ValueError("index sections are inconsistent")
        index.shards = shards
        index.live, index.dead, index.arena_dead, index.live_bytes, index.stored_bytes = counters
        return index

    def counters(self) -> tuple[int, int, int, int, int]:
        return self.live, self.dead, self.arena_dead, self.live_bytes, self.stored_bytes


def _fields(entry: Entry) -> tuple[int, ...]:
    return (
        entry.key_hash,
        entry.gen,
        entry.checksum,
        entry.start,
        entry.nblocks,
        entry.stored_len,
        entry.orig_len,
        entry.expires,
        entry.created,
        entry.atime,
        entry.key_len,
        entry.codec,
        entry.kind,
        entry.freq,
        entry.flags,
    )
