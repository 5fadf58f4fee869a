"""Removals: delete an object, purge a prefix, clear everything, drop one stale entry.

A purge makes every matching key invisible at once (a purge rule, then marking the key
arena a window at a time) and journals one PURGE record; the reaper (maintenance.py)
frees the blocks later. Deletes and purges sync before they return, so what they removed
stays removed after a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cache.keys import object_prefix
from cache.rawdisk import journal
from cache.rawdisk.core import Core
from cache.rawdisk.index import DEAD, key_is_storable
from cache.rawdisk.layout import key_hash
from cache.rawdisk.persistence import Persistence
from cache.rawdisk.writes import DeleteLog

PURGE_WINDOW = 512 << 10


class Purger:
    def __init__(
        self,
        core: Core,
        persist: Persistence,
        deletes: DeleteLog,
        wake_reaper: Callable[[], None],
    ) -> None:
        self.core = core
        self.tables = core.tables
        self.persist = persist
        self.deletes = deletes
        self._wake_reaper = wake_reaper

    async def delete(self, object_key: str) -> int:
        """The object's own entry and every key of it (:func:`cache.keys.object_prefix`)."""
        core = self.core
        kb = object_key.encode()
        if not key_is_storable(kb):
            return 0
        async with core.mutate:
            removed = 0
            self.deletes.record(kb, False)
            index = self.tables.index
            row = index.find(kb, key_hash(kb))
            if row >= 0 and index.is_visible(row):
                self.persist.journal(self.tables.drop(row))
                removed += 1
            removed += await self._purge_locked(object_prefix(object_key).encode())
        core.stats["deletes_total"] += 1
        if removed:
            await self.persist.make_durable()
        return removed

    async def delete_prefix(self, prefix: str) -> int:
        core = self.core
        pb = prefix.encode()
        if pb and not key_is_storable(pb):
            return 0
        async with core.mutate:
            removed = await self._purge_locked(pb)
        core.stats["purges_total"] += 1
        if removed:
            await self.persist.make_durable()
        return removed

    async def clear(self) -> int:
        # The reset frees every block at once, so it is made durable before any put can
        # reuse one (lock order as in checkpoint(): persist, then mutate).
        core = self.core
        async with core.persist:
            async with core.mutate:
                removed = self.tables.index.entries
                self.deletes.record(b"", True)
                self.tables.reset()
                self.persist.journal(journal.ClearRecord())
                if not core.closed:
                    await asyncio.shield(self.persist.sync_locked())
        core.stats["purges_total"] += 1
        core.stats["purged_entries_total"] += removed
        return removed

    async def _purge_locked(self, prefix: bytes) -> int:
        """Make every live key starting with ``prefix`` invisible now; reclaim later.

        Cancelled between windows, it still marks the rest and journals itself: what
        became invisible must stay gone after a restart.
        """
        core = self.core
        self.deletes.record(prefix, True)
        core.rules.append(prefix)
        index = self.tables.index
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
                self.persist.journal(journal.PurgeRecord(prefix))
                self._wake_reaper()
            if cancelled:  # no caller left to wait for durability: sync anyway
                core.spawn(self.persist.sync())
            core.rules.remove(prefix)
            core.stats["purged_entries_total"] += total
        return total

    async def drop_if_current(self, row: int, gen: int, counter: str | None) -> None:
        """Drop ``row`` if it still holds generation ``gen`` (expired or damaged entries)."""
        async with self.core.mutate:
            index = self.tables.index
            if row < index.nrows and index.flags_of(row) and index.gen_of(row) == gen:
                if index.state_byte(row) == DEAD:
                    return
                self.persist.journal(self.tables.drop(row))
                if counter:
                    self.core.stats[counter] += 1
