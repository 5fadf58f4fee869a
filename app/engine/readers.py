"""Who reads what right now: the bookkeeping that decides when bytes may go.

- ``streaming``: responses streaming each entry. While more than one does, completed
  slices of a shared but unstored object (too large for the cache) stay in ``recent``,
  so that clients a little behind the one that fetched a slice still find it; the
  entry's recent slices go when its last response ends.
- ``reading``: responses reading each version (key: the version's slice-key prefix). A
  replaced version's slices are deleted when its last reader ends: a stale response must
  not lose its slices to the revalidation it started.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from app.engine.fills import SliceBuffer
from cache import keys
from cache.indexed import ObjectIndexedLRU
from cache.protocol import CacheFront


def version_slices_prefix(entry_key: str, version: str) -> str:
    """What every slice key of one version of an entry starts with."""
    return keys.version_prefix(entry_key, version)


@dataclass
class Readers:
    store: CacheFront | None
    recent: ObjectIndexedLRU[str, SliceBuffer]
    streaming: dict[str, int] = field(default_factory=dict)
    reading: dict[str, int] = field(default_factory=dict)
    _retired: set[str] = field(default_factory=set)
    # Deletions of retired versions in flight (a reference keeps each task alive).
    _deleting: set[asyncio.Task[None]] = field(default_factory=set)

    def started(self, entry_key: str, version: str) -> str:
        """A response starts streaming ``entry_key`` at ``version``; returns the version's
        prefix, to hand back to :meth:`ended`."""
        self.streaming[entry_key] = self.streaming.get(entry_key, 0) + 1
        prefix = version_slices_prefix(entry_key, version)
        self.reading[prefix] = self.reading.get(prefix, 0) + 1
        return prefix

    def ended(self, entry_key: str, prefix: str) -> None:
        self._stream_ended(entry_key)
        self._version_read(prefix)

    def streamers(self, entry_key: str) -> int:
        return self.streaming.get(entry_key, 0)

    def _stream_ended(self, entry_key: str) -> None:
        remaining = self.streaming.get(entry_key, 1) - 1
        if remaining > 0:
            self.streaming[entry_key] = remaining
            return
        self.streaming.pop(entry_key, None)
        prefix = keys.object_prefix(entry_key)  # every slice key of the entry starts so
        for key in self.recent.keys_of(entry_key, within=prefix):
            self.recent.pop(key, None)

    def _version_read(self, prefix: str) -> None:
        remaining = self.reading.get(prefix, 1) - 1
        if remaining > 0:
            self.reading[prefix] = remaining
            return
        self.reading.pop(prefix, None)
        if prefix in self._retired and self.store is not None:
            self._retired.discard(prefix)
            deleting = asyncio.get_running_loop().create_task(self._delete_version(prefix))
            self._deleting.add(deleting)
            deleting.add_done_callback(self._deleting.discard)

    async def retire_version(self, entry_key: str, version: str) -> None:
        """A newer version replaced this one: its slices are garbage once no response
        reads them any more (now, or when the last reader ends)."""
        prefix = version_slices_prefix(entry_key, version)
        if self.reading.get(prefix, 0) > 0:
            self._retired.add(prefix)
            return
        await self._delete_version(prefix)

    async def _delete_version(self, prefix: str) -> None:
        if self.store is not None:
            await self.store.delete_prefix(prefix)

    # --- invalidation (the directory forgets an object) ----------------------------------

    def forget_object(self, object_key: str) -> None:
        self.recent.pop_object(object_key)

    def forget_prefix(self, prefix: str) -> None:
        for key in [k for k in self.recent if k.startswith(prefix)]:
            self.recent.pop(key, None)

    def forget_all(self) -> None:
        self.recent.clear()
