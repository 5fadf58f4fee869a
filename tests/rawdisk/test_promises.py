"""What the L2 store acknowledges (a write, a checkpoint, a purge) holds, also under load."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cache.rawdisk import RawDiskStore, codec
from cache.rawdisk import purge as purge_module
from cache.rawdisk.checkpoint import read_checkpoint, read_header
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import check_consistent, flip_byte, payload

Make = Callable[..., RawDiskCacheSettings]


async def test_put_compressing_across_a_covering_delete_is_dropped(
    make_settings: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put whose compression is still running when a delete covers its key is dropped."""
    store = await RawDiskStore.open(make_settings(enable_compression=True))
    gate = threading.Event()
    entered = threading.Event()
    original = codec.encode

    def slow_encode(*args: Any) -> Any:
        entered.set()
        gate.wait(10)
        return original(*args)

    monkeypatch.setattr(codec, "encode", slow_encode)
    try:
        key = "http://o/a v 0"
        put = asyncio.create_task(store.put_slice(key, b"stale " * 2000, None))
        while not entered.is_set():
            await asyncio.sleep(0.005)
        assert await store.delete("http://o/a") == 0
        gate.set()
        assert not await put
        assert await store.get_slice(key) is None
        assert store.stats()["discarded_puts_total"] == 1
        check_consistent(store)
    finally:
        gate.set()
        await store.close()


def _slot_checkpoint_is_valid(store: RawDiskStore, slot: int) -> int:
    """The seq of the valid checkpoint in ``slot`` (0 or 1), or -1."""
    offset = store.geometry.checkpoint_slot(slot)
    header = read_header(store._device.fd, offset, store._format_id)
    if header is None:
        return -1
    loaded = read_checkpoint(store._device.fd, offset, header, store.geometry.data_blocks)
    return -1 if loaded is None else header.seq


def _touch_during_checkpoint_writes(store: RawDiskStore, loop: asyncio.AbstractEventLoop) -> None:
    """Each checkpoint section write first lets the loop serve a hit on every row (as L2
    hits do: atime and frequency change without the mutation lock)."""
    original = store._device.pwrite
    geo = store.geometry
    region = (geo.checkpoint_offset, geo.journal_offset)

    def touch_all(done: threading.Event) -> None:
        index = store._index
        for row in range(index.nrows):
            if index.is_visible(row):
                index.touch(row, int(time.time()) + 7)
        done.set()

    def pwrite(data: Any, offset: int) -> None:
        if region[0] <= offset < region[1] and threading.current_thread().name.startswith("l2-io"):
            done = threading.Event()
            loop.call_soon_threadsafe(touch_all, done)
            done.wait(5)
        original(data, offset)

    store._device.pwrite = pwrite  # type: ignore[method-assign]


async def test_checkpoint_taken_during_hits_verifies(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    keys = [f"http://o/f v {i}" for i in range(40)]
    try:
        for key in keys:
            assert await store.put_slice(key, payload(key, 1, 3000), None)
        _touch_during_checkpoint_writes(store, asyncio.get_running_loop())
        for _ in range(4):
            await store.checkpoint()
            seq = store._ckpt_seq
            assert _slot_checkpoint_is_valid(store, seq % 2) == seq
        assert store.stats()["checkpoint_failures_total"] == 0
    finally:
        await store._abandon()
    store = await RawDiskStore.open(settings)
    try:
        assert store.stats()["index_recoveries"] == 0
        for key in keys:
            assert bytes(await store.get_slice(key) or b"") == payload(key, 1, 3000)
    finally:
        await store.close()


async def test_a_bad_checkpoint_never_replaces_the_last_good_one(make_settings: Make) -> None:
    """Two checkpoints in a row fail verification (bad bytes reach the slot); a crash after
    them still reopens the full index from the last good checkpoint plus the journal."""
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    keys = [f"http://o/g v {i}" for i in range(30)]
    try:
        for key in keys[:10]:
            assert await store.put_slice(key, payload(key, 1, 2000), None)
        await store.checkpoint()
        good = store._ckpt_seq
        assert _slot_checkpoint_is_valid(store, good % 2) == good
        original = store._device.pwrite
        geo = store.geometry

        def corrupting(data: Any, offset: int) -> None:
            if geo.checkpoint_offset + 4096 <= offset < geo.journal_offset:
                data = bytes(data)
                data = bytes([data[0] ^ 0xFF]) + data[1:] if data else data
            original(data, offset)

        store._device.pwrite = corrupting  # type: ignore[method-assign]
        for round_ in range(2):
            for key in keys[10 + 10 * round_ : 20 + 10 * round_]:
                assert await store.put_slice(key, payload(key, 1, 2000), None)
            await store.checkpoint()
            assert _slot_checkpoint_is_valid(store, good % 2) == good
        assert store.stats()["checkpoint_failures_total"] == 2
        await store.sync()
    finally:
        await store._abandon()
    store = await RawDiskStore.open(settings)
    try:
        assert store.stats()["index_recoveries"] == 0
        for key in keys:
            assert bytes(await store.get_slice(key) or b"") == payload(key, 1, 2000), key
        check_consistent(store)
    finally:
        await store.close()


async def test_fallback_at_startup_rewrites_the_damaged_slot_not_the_good_one(
    make_settings: Make,
) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    keys = [f"a {i}" for i in range(20)]
    for key in keys:
        assert await store.put_slice(key, payload(key, 0, 2000), None)
    await store.checkpoint()
    await store.close()  # the newest checkpoint, in the other slot
    newest = store._good_slot
    offset = store.geometry.checkpoint_slot(newest) + 4096 + 100
    flip_byte(settings.device_path, offset)
    store = await RawDiskStore.open(settings)
    try:
        # The fresh startup checkpoint went into the damaged slot: both are valid now, so a
        # crash while it was written could not have cost the only good one.
        assert store._good_slot == newest
        assert _slot_checkpoint_is_valid(store, newest) == store._ckpt_seq
        assert _slot_checkpoint_is_valid(store, 1 - newest) == store._ckpt_seq - 2
        assert sorted(store.keys()) == sorted(keys)
    finally:
        await store.close()


async def test_purge_is_durable_when_it_returns(make_settings: Make) -> None:
    """A crash right after delete/delete_prefix returned never brings the objects back."""
    settings = make_settings(sync_interval=30.0)
    store = await RawDiskStore.open(settings)
    keys = [f"http://o/p v {i}" for i in range(20)] + ["http://o/q", "http://o/q v 0"]
    try:
        for key in keys:
            assert await store.put_slice(key, payload(key, 0, 1000), None)
        await store.sync()
        assert await store.delete_prefix("http://o/p ") == 20
        assert await store.delete("http://o/q") == 2
    finally:
        await store._abandon()  # as kill -9: the next periodic sync never happens
    store = await RawDiskStore.open(settings)
    try:
        assert list(store.keys()) == []
        for key in keys:
            assert await store.get_slice(key) is None
    finally:
        await store.close()


async def test_purge_cancelled_midway_still_records_itself(
    make_settings: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(purge_module, "PURGE_WINDOW", 256)  # many windows, many yields
    settings = make_settings(sync_interval=30.0)
    store = await RawDiskStore.open(settings)
    keys = [f"http://o/c v {i}" for i in range(60)]
    try:
        for key in keys:
            assert await store.put_slice(key, payload(key, 0, 500), None)
        await store.sync()
        purge = asyncio.create_task(store.delete_prefix("http://o/c "))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not purge.done()
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
        # Whatever the cancelled purge made invisible is gone for good: it finished
        # marking, journaled itself and synced.
        assert [key for key in keys if store.contains_slice(key)] == []
        await store._drain()
    finally:
        await store._abandon()
    store = await RawDiskStore.open(settings)
    try:
        assert list(store.keys()) == []
    finally:
        await store.close()


async def test_small_device_keeps_holding_entries_under_key_churn(make_settings: Make) -> None:
    """16 MiB device, ~15 live entries, thousands of distinct keys put and deleted: freed
    key bytes must not fill the checkpoint slot (every checkpoint then failed and every
    new put was evicted at once)."""
    store = await RawDiskStore.open(make_settings(sync_interval=0.02))
    slot = store.geometry.checkpoint_slot_size
    pad = "p" * 400
    try:
        for i in range(1200):
            key = f"http://o/{pad}/{i} v 0"
            assert await store.put_slice(key, b"x" * 100, None)
            if i >= 15:
                await store.delete(f"http://o/{pad}/{i - 15}")
            if i % 300 == 299:
                await store.checkpoint()
        # The maintenance steps at least once more, here (the background loop runs them
        # too, but a sleep cannot show that it did): compaction, then pressure eviction,
        # which must evict nothing with ~15 live entries.
        await store._compact_if_needed()
        await store._evict_if_needed()
        await store.checkpoint()
        stats = store.stats()
        assert stats["checkpoint_failures_total"] == 0
        assert stats["evictions_total"] == 0
        assert store._index.checkpoint_bytes() < slot // 2
        key = f"http://o/{pad}/1199 v 0"
        assert bytes(await store.get_slice(key) or b"") == b"x" * 100
        assert stats["entries"] == 15
    finally:
        await store.close()


async def test_repeated_checkpoint_failure_is_logged_once(
    make_settings: Make, caplog: pytest.LogCaptureFixture
) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        assert await store.put_slice("k v 0", b"x", None)
        store._core.geo = dataclasses.replace(store._core.geo, checkpoint_slot_size=4096 + 64)
        with caplog.at_level(logging.ERROR, logger="slicecache.rawdisk"):
            for _ in range(10):
                await store.checkpoint()
        assert store.stats()["checkpoint_failures_total"] == 10
        errors = [r for r in caplog.records if "checkpoint" in r.getMessage()]
        assert len(errors) == 1
    finally:
        store._core.geo = store._sb.geometry
        await store.close()
