"""What every part of one open L2 store shares (see store.py for the parts).

The device and its geometry, the :class:`~cache.rawdisk.tables.Tables` (index and block
map), the two locks, the I/O thread pool, background tasks and the counters ``stats()``
reports. Lock order, everywhere: ``persist`` before ``mutate``. Every mutation of the
tables runs on the event loop under ``mutate`` and appends a journal record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from cache.ratelimit import DEFAULT_INTERVAL, RateLimitedLog
from cache.rawdisk.checkpoint import HEADER_SIZE
from cache.rawdisk.device import Device
from cache.rawdisk.layout import Geometry, Superblock
from cache.rawdisk.tables import Tables

if TYPE_CHECKING:
    from settings import RawDiskCacheSettings

log = logging.getLogger("slicecache.rawdisk")

T = TypeVar("T")

IO_THREADS = 4

COUNTERS = (
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
    "resident_reads_total",  # verified on the event loop: every page was in memory
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


def now() -> int:
    """Unix seconds, as the index stores expiry and access times."""
    return int(time.time())


class Core:
    def __init__(
        self, settings: RawDiskCacheSettings, device: Device, superblock: Superblock
    ) -> None:
        self.settings = settings
        self.device = device
        self.sb = superblock
        self.geo: Geometry = superblock.geometry
        self.format_id = superblock.format_id
        self.stats: dict[str, float] = dict.fromkeys(COUNTERS, 0.0)
        self.stats.update(
            journal_sync_seconds_last=0.0,
            checkpoint_seconds_last=0.0,
            checkpoint_bytes_last=0.0,
            load_seconds=0.0,
            replayed_records=0.0,
            superblock_repairs=0.0,
            index_recoveries=0.0,
        )
        self.tables = Tables(self.geo.data_blocks, self.stats)
        self.mutate = asyncio.Lock()
        self.persist = asyncio.Lock()
        self.pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="l2-io")
        self.tasks: set[asyncio.Task[Any]] = set()
        self.rules: list[bytes] = []  # prefixes being purged right now: already invisible
        self.problems: list[str] = []  # found while loading (reported by the CLI)
        self.closed = False
        # A checkpoint did not fit its slot: evict until the index fits again.
        self.index_pressure = False
        # Read, write, verification and checkpoint failures: one line per kind per interval
        # (a damaged or failing device fails every read; a line each would flood the log
        # from the event loop).
        # (The app passes its WARNING_INTERVAL_SECONDS to RawDiskStore.open.)
        self.warnings = RateLimitedLog(log, DEFAULT_INTERVAL)

    # --- thread pool and tasks -----------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- shared rules --------------------------------------------------------------------

    def purging(self, kb: bytes) -> bool:
        """Is ``kb`` covered by a purge in progress (already invisible)?"""
        return bool(self.rules) and any(kb.startswith(p) for p in self.rules)

    def over(self, fraction: float) -> bool:
        """Is the store fuller than ``fraction`` (blocks, not counting pending frees, or
        index entries)?"""
        geo = self.geo
        tables = self.tables
        if tables.map.used_blocks - tables.pending_free_blocks > fraction * geo.data_blocks:
            return True
        return tables.index.live > fraction * geo.max_entries

    def index_budget(self) -> int:
        """Checkpoint slot bytes the index may use (the rest: header, block map)."""
        return self.geo.checkpoint_slot_size - self.geo.data_blocks - 2 * HEADER_SIZE

    async def compact_index(self) -> None:
        """Drop freed key bytes from the arena (caller holds the mutation lock)."""
        for _ in self.tables.index.compact_steps():
            await asyncio.sleep(0)
