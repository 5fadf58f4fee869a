"""Admission, eviction and the background work of an open store.

* admission: a count-min sketch of lookups; above the low watermark a key must have been
  asked for :data:`~cache.rawdisk.policy.ADMIT_MIN_USES` times to be stored (policy.py);
* eviction: sampled LFU with ageing, expired rows first;
* the maintenance loop: periodic journal sync, checkpoints, arena compaction, eviction
  down to the low watermark, expiry, the fragmentation figures;
* the reaper: frees the blocks of purged rows, a batch at a time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from cache.rawdisk.core import Core, now
from cache.rawdisk.persistence import CHECKPOINT_JOURNAL_FILL, CHECKPOINT_RECORDS, Persistence
from cache.rawdisk.policy import (
    ADMIT_MIN_USES,
    HIGH_WATERMARK,
    LOW_WATERMARK,
    SAMPLE,
    CountMinSketch,
    eviction_score,
)

log = logging.getLogger("slicecache.rawdisk")

REAP_BATCH = 256
EVICT_BATCH = 64  # rows evicted per hold of the mutation lock
EXPIRY_BATCH = 4096
FRAG_SCAN_SECONDS = 30.0
# Blocks per step of the fragmentation scan, between which other tasks run: a scattered
# map of 2^20 blocks held the event loop for 270 ms in one step, 2^14 for 3.5 ms.
FRAG_WINDOW = 1 << 14


class Maintenance:
    def __init__(self, core: Core, persist: Persistence) -> None:
        self.core = core
        self.tables = core.tables
        self.persist = persist
        self.sketch = CountMinSketch(min(core.geo.max_entries, 1 << 22))
        self.reap_wanted = asyncio.Event()
        self.largest_free_run = core.geo.data_blocks
        self.free_runs = 1
        self._last_frag_scan = 0.0
        self._expiry_cursor = 0
        self._wake = False
        self._loop: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._maintain(), name="l2-maintenance")
        self._reaper = asyncio.create_task(self._reap(), name="l2-reaper")
        if self.tables.index.dead:
            self.reap_wanted.set()

    @property
    def background(self) -> list[asyncio.Task[None]]:
        return [task for task in (self._loop, self._reaper) if task is not None]

    # --- admission and eviction ----------------------------------------------------------

    def admits(self, kb: bytes, h: int) -> bool:
        """May a put of ``kb`` (hash ``h``) take space? A key already stored always may."""
        if self.core.over(LOW_WATERMARK) and self.sketch.estimate(h) < ADMIT_MIN_USES:
            return self.tables.index.find(kb, h) >= 0
        return True

    def evict_one(self) -> bool:
        """Evict the lowest-scored of a few sampled visible rows. False if none found."""
        tables = self.tables
        index = tables.index
        nrows = index.nrows
        if not nrows or index.entries <= 0:
            return False
        now_s = now()
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
            if entry.expires and entry.expires <= now_s:
                best = row
                break
            score = eviction_score(entry.freq, entry.atime, now_s)
            if best_score is None or score < best_score:
                best, best_score = row, score
        if best < 0:
            return False
        entry = index.entry(best)
        self.persist.journal(tables.drop(best))
        self.core.stats["evictions_total"] += 1
        self.core.stats["evicted_bytes_total"] += entry.orig_len
        return True

    def wake(self) -> None:
        self._wake = True

    # --- the loop ------------------------------------------------------------------------

    async def _maintain(self) -> None:
        core = self.core
        persist = self.persist
        interval = core.settings.sync_interval
        tick = min(0.1, interval)
        last_sync = time.monotonic()
        while not core.closed:
            await asyncio.sleep(tick)
            try:
                mono = time.monotonic()
                if mono - last_sync >= interval or persist.sync_soon:
                    last_sync = mono
                    if persist.buffered or persist.records_since_ckpt or self.tables.unsynced_frees:
                        await persist.sync()
                if (
                    persist.ckpt_due
                    or persist.records_since_ckpt >= CHECKPOINT_RECORDS
                    or persist.journal_fill() >= CHECKPOINT_JOURNAL_FILL
                ):
                    await persist.checkpoint()
                await self.compact_if_needed()
                await self.evict_if_needed()
                await self._expire_some()
                if mono - self._last_frag_scan >= FRAG_SCAN_SECONDS:
                    self._last_frag_scan = mono
                    await self.scan_fragmentation()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep maintaining; one failed step must not stop the rest
                log.exception("L2 maintenance step failed")

    def _index_live_bytes(self) -> int:
        """What the index needs in a checkpoint once freed key bytes are compacted away."""
        index = self.tables.index
        return index.checkpoint_bytes() - index.arena_dead

    async def evict_if_needed(self) -> None:
        # Only live index bytes count: evicting adds freed key bytes, which compaction
        # removes; counting them evicted everything on a small device.
        core = self.core
        index_budget = core.index_budget()
        while not core.closed and (
            core.over(HIGH_WATERMARK)
            or core.index_pressure
            or self._index_live_bytes() > 0.9 * index_budget
        ):
            evicted = 0
            async with core.mutate:
                for _ in range(EVICT_BATCH):
                    if not (
                        core.over(LOW_WATERMARK) or self._index_live_bytes() > 0.8 * index_budget
                    ):
                        core.index_pressure = False
                        break
                    if not self.evict_one():
                        core.index_pressure = False
                        break
                    evicted += 1
            if not evicted or (not core.over(LOW_WATERMARK) and not core.index_pressure):
                break
            await asyncio.sleep(0)
        self._wake = False

    async def _expire_some(self) -> None:
        tables = self.tables
        index = tables.index
        if not index.nrows:
            return
        start = self._expiry_cursor % index.nrows
        stop = min(index.nrows, start + EXPIRY_BATCH)
        victims = [(row, index.gen_of(row)) for row in index.expired_rows(start, stop, now())]
        self._expiry_cursor = stop
        if victims:
            async with self.core.mutate:
                for row, gen in victims:
                    if tables.index is index and index.flags_of(row) and index.gen_of(row) == gen:
                        if index.is_visible(row):
                            self.persist.journal(tables.drop(row))
                            self.core.stats["expirations_total"] += 1

    async def _reap(self) -> None:
        core = self.core
        tables = self.tables
        while not core.closed:
            await self.reap_wanted.wait()
            self.reap_wanted.clear()
            while tables.index.dead and not core.closed:
                async with core.mutate:
                    rows = tables.index.dead_rows(REAP_BATCH)
                    for row in rows:
                        tables.reclaim(row)
                if not rows:
                    break
                await asyncio.sleep(0)

    async def compact_if_needed(self) -> None:
        core = self.core
        index = self.tables.index
        dead = index.arena_dead
        # Half the arena freed, or an eighth of it once the index fills half of its slot.
        if dead < 4096 or (
            dead < len(index.arena) // 2
            and (
                dead < len(index.arena) // 8 or index.checkpoint_bytes() < core.index_budget() // 2
            )
        ):
            return
        async with core.mutate:
            if self.tables.index is not index:
                return
            await core.compact_index()

    async def scan_fragmentation(self) -> None:
        """Largest free run and number of free runs, a window at a time (approximate under
        concurrent allocation, exact when idle)."""
        block_map = self.tables.map
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
        self.largest_free_run = largest
        self.free_runs = runs
