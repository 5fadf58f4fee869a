"""Adoption of a probe's answer: the answer is served from memory at once, and its
metadata reaches the store after the answer's head, never holding it (issue 16), with a
purge since the origin request still winning."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.engine.budget import ByteBudget
from app.engine.objectmeta import ObjectMeta
from app.engine.objects import ObjectDirectory, ObjectRequest, Opened
from app.engine.slicer import SliceEngine
from app.httpcache.freshness import FreshnessPolicy
from app.upstream.client import UpstreamClient, UpstreamTimeouts, default_transport
from cache.memory import MemoryStore
from cache.tiered import TieredStore
from tests.servers import run_asgi_in_thread
from tests.test_pressure_policy import SLICE, TinyOrigin

MiB = 1024 * 1024


class _StalledMetaWrites(MemoryStore):
    """An L1 whose metadata writes wait for ``gate``: a slow store."""

    def __init__(self) -> None:
        super().__init__(64 * MiB)
        self.gate = asyncio.Event()
        self.meta_writes = 0

    async def put_meta(
        self, key: str, meta: bytes, expires_at: float | None, *, epoch: int | None = None
    ) -> bool:
        self.meta_writes += 1
        await self.gate.wait()
        return await super().put_meta(key, meta, expires_at, epoch=epoch)


def _directory(origin_url: str, store: TieredStore) -> ObjectDirectory:
    upstream = UpstreamClient(origin_url, UpstreamTimeouts(5, 5, None), default_transport(8))
    engine = SliceEngine(upstream, store, SLICE, 2, 0, ByteBudget(8 * MiB))
    return ObjectDirectory(engine, store, FreshnessPolicy())


def _meta(size: int) -> ObjectMeta:
    now = time.time()
    return ObjectMeta(size, '"v1"', None, [("etag", '"v1"')], now, now)


async def _close(directory: ObjectDirectory, store: TieredStore) -> None:
    await directory.close()
    await directory.engine.close()
    await store.close()
    await directory.engine.upstream.aclose()


def test_a_stalled_metadata_write_does_not_hold_the_answer() -> None:
    origin = TinyOrigin()
    origin.add("/slow-meta.bin", 3 * SLICE, [("cache-control", "public, max-age=600")])

    async def scenario(origin_url: str) -> dict[str, Any]:
        l1 = _StalledMetaWrites()
        store = TieredStore(l1, None)
        directory = _directory(origin_url, store)
        key = origin_url + "/slow-meta.bin"
        request = ObjectRequest(key, "/slow-meta.bin", [], [("host", "origin")])
        # Before, the probe awaited the write: this waited for the gate, forever.
        opened = await asyncio.wait_for(directory.open(request), 10)
        assert isinstance(opened, Opened)
        seen: dict[str, Any] = {
            "served_from_memory": await directory.cached_meta(key) is opened.meta,
            "in_store_before": await store.get_meta(key),
            "in_flight_before": directory.in_flight(),
        }
        for _ in range(3):
            await asyncio.sleep(0)  # the write starts, and waits at the gate
        seen["writes_started"] = l1.meta_writes
        l1.gate.set()
        await directory.records.close()  # every adoption so far reaches the store
        blob = await store.get_meta(key)
        seen["stored"] = None if blob is None else ObjectMeta.from_bytes(blob).etag
        seen["etag"] = opened.meta.etag
        seen["in_flight_after"] = directory.in_flight()
        if opened.first_fill is not None and opened.first_fill.task is not None:
            await asyncio.wait_for(asyncio.shield(opened.first_fill.task), 10)
        await _close(directory, store)
        return seen

    with run_asgi_in_thread(origin) as origin_url:
        seen = asyncio.run(scenario(origin_url))
    assert seen["served_from_memory"], "the adopted version is not served from memory"
    assert seen["in_store_before"] is None
    assert seen["in_flight_before"], "a pending metadata write is not counted as in flight"
    assert seen["writes_started"] == 1
    assert seen["etag"] is not None and seen["stored"] == seen["etag"]
    assert not seen["in_flight_after"]


def test_a_purge_between_the_adoption_and_its_store_write_wins() -> None:
    async def scenario() -> dict[str, Any]:
        store = TieredStore(MemoryStore(64 * MiB), None)
        directory = _directory("http://127.0.0.1:9", store)  # never asked
        records = directory.records
        key = "http://127.0.0.1:9/purged-late.bin"
        meta = _meta(3 * SLICE)
        epoch = store.epoch
        entry_key = await records.adopt(key, meta, [], epoch)
        seen: dict[str, Any] = {"pending": records.storing(), "known": records.known_meta(key)}
        await directory.forget(key)  # the PURGE lands before the write ran
        await records.close()
        seen["memory_after"] = await directory.cached_meta(key)
        seen["store_after"] = await store.get_meta(entry_key)
        seen["discarded"] = store.counters["stale_writes_discarded"]
        await _close(directory, store)
        return seen

    seen = asyncio.run(scenario())
    assert seen["pending"] and seen["known"] is not None
    assert seen["memory_after"] is None, "the purged version is still known"
    assert seen["store_after"] is None, "the write adopted before the PURGE landed after it"
    assert seen["discarded"] == 1


def test_close_stores_what_was_adopted_and_not_yet_written() -> None:
    async def scenario() -> bytes | None:
        store = TieredStore(MemoryStore(64 * MiB), None)
        directory = _directory("http://127.0.0.1:9", store)
        key = "http://127.0.0.1:9/at-shutdown.bin"
        await directory.records.adopt(key, _meta(SLICE), [], store.epoch)
        await directory.close()  # in the same turn: the write has not even started
        blob = await store.get_meta(key)
        await directory.engine.close()
        await store.close()
        await directory.engine.upstream.aclose()
        return blob

    blob = asyncio.run(scenario())
    assert blob is not None and ObjectMeta.from_bytes(blob).etag == '"v1"'
