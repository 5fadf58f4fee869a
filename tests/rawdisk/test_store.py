"""RawDiskStore behaviour: the Store protocol, restart, lock, geometry, space, policy."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cache.memory import MemoryStore
from cache.protocol import Store
from cache.rawdisk import RawDiskError, RawDiskStore
from cache.rawdisk.layout import CODEC_ZSTD, key_hash
from cache.tiered import TieredStore
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import (
    MiB,
    check_consistent,
    check_payload,
    exists,
    fd_flags,
    payload,
    read_at,
    write_at,
    write_new,
)
from tests.waiting import async_wait_for

Make = Callable[..., RawDiskCacheSettings]


async def test_implements_the_store_protocol(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        assert isinstance(store, Store)
        assert store.name == "l2"
        stats = store.stats()
        for key in ("entries", "bytes", "capacity_bytes"):
            assert key in stats
    finally:
        await store.close()


async def test_put_get_meta_and_slices(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        data = payload("http://o/a v 0", 1, 300_000)
        assert await store.put_slice("http://o/a v 0", data, None)
        assert await store.put_meta("http://o/a", b'{"size": 1}', None)
        got = await store.get_slice("http://o/a v 0")
        assert got is not None and bytes(got) == data
        assert await store.get_meta("http://o/a") == b'{"size": 1}'
        # Slices and metadata are separate kinds.
        assert await store.get_meta("http://o/a v 0") is None
        assert await store.get_slice("http://o/a") is None
        assert await store.get_slice("http://o/missing") is None
        # Overwrite replaces and frees the old extent.
        data2 = payload("http://o/a v 0", 2, 5000)
        assert await store.put_slice("http://o/a v 0", data2, None)
        got = await store.get_slice("http://o/a v 0")
        assert got is not None and bytes(got) == data2
        assert sorted(store.keys()) == ["http://o/a", "http://o/a v 0"]
        assert store.contains_slice("http://o/a v 0")
        assert not store.contains_slice("http://o/a")  # metadata, not a slice
        assert not store.contains_slice("http://o/b v 0")
        stats = store.stats()
        assert stats["entries"] == 2
        assert stats["hits_total"] == 3 and stats["misses_total"] == 3
        check_consistent(store)
    finally:
        await store.close()


async def test_read_ahead_is_what_the_caller_names_never_parsed_from_the_key(
    make_settings: Make,
) -> None:
    """``get_slice(key, next_key=...)`` prefetches ``next_key``'s extent; without it the
    store prefetches nothing, even for keys that look like ``<entry> <version> <index>``
    (it used to parse them and guess ``<index + 1>``)."""
    store = await RawDiskStore.open(make_settings())
    hinted: list[tuple[int, int]] = []
    real_prefetch = store._device.prefetch

    def prefetch(offset: int, length: int) -> None:
        hinted.append((offset, length))
        real_prefetch(offset, length)

    store._device.prefetch = prefetch  # type: ignore[method-assign]
    try:
        for key in ("http://o/a v 0", "http://o/a v 1", "http://o/b"):
            assert await store.put_slice(key, payload(key, 0, 20_000), None)
        row = store._index.find(b"http://o/b", _h(b"http://o/b"))
        start, nblocks = store._index.extent_of(row)
        geo = store.geometry
        assert await store.get_slice("http://o/a v 0") is not None
        assert store.stats()["prefetches_total"] == 0 and hinted == []
        # The hint is any key: the store does not care what it looks like.
        assert await store.get_slice("http://o/a v 0", next_key="http://o/b") is not None
        assert store.stats()["prefetches_total"] == 1
        assert hinted == [(geo.block_offset(start), nblocks * geo.block_size)]
        # A hint for a key not stored, or a miss: nothing to prefetch.
        assert await store.get_slice("http://o/a v 0", next_key="http://o/a v 7") is not None
        assert await store.get_slice("http://o/none", next_key="http://o/b") is None
        assert store.stats()["prefetches_total"] == 1 and len(hinted) == 1
    finally:
        await store.close()
    # enable_prefetch=false: hints are ignored.
    store = await RawDiskStore.open(make_settings(enable_prefetch=False))
    try:
        assert await store.get_slice("http://o/a v 0", next_key="http://o/a v 1") is not None
        assert store.stats()["prefetches_total"] == 0
    finally:
        await store.close()


async def test_the_tiered_front_passes_the_read_ahead_hint_to_l2(make_settings: Make) -> None:
    l2 = await RawDiskStore.open(make_settings())
    front = TieredStore(MemoryStore(MiB), l2)
    try:
        for key in ("http://o/a v 0", "http://o/a v 1"):
            assert await l2.put_slice(key, payload(key, 0, 20_000), None)
        assert await front.get_slice("http://o/a v 0") is not None  # from L2, no hint
        assert l2.stats()["prefetches_total"] == 0
        await front.clear()
        assert await l2.put_slice("http://o/a v 0", payload("http://o/a v 0", 0, 9), None)
        assert await l2.put_slice("http://o/a v 1", payload("http://o/a v 1", 0, 9), None)
        got = await front.get_slice("http://o/a v 0", next_key="http://o/a v 1")
        assert got is not None
        assert l2.stats()["prefetches_total"] == 1
    finally:
        await front.close()


def test_no_code_of_the_l2_store_parses_keys() -> None:
    """The L2 store learns the next slice through the protocol (``next_key``); the key
    format belongs to cache/keys.py alone (delete asks it for an object's prefix)."""
    root = Path(__file__).resolve().parents[2] / "cache" / "rawdisk"
    parsing = (
        "SEPARATOR",
        "partition(",
        "split(",
        "isdigit(",
        'b" "',
        "slice_key",
        "object_key_of",
    )
    for source in sorted(root.glob("*.py")):
        text = source.read_text()
        for sign in parsing:
            assert sign not in text, f"{source.name} parses keys: {sign}"


async def test_empty_and_memoryview_payloads(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        assert await store.put_slice("k 0", b"", None)
        got = await store.get_slice("k 0")
        assert got is not None and bytes(got) == b""
        view = memoryview(bytearray(b"abc" * 1000))
        assert await store.put_slice("k 1", view, None)
        assert bytes(await store.get_slice("k 1") or b"") == b"abc" * 1000
    finally:
        await store.close()


async def test_unstorable_keys_and_sizes_are_declined(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        assert not await store.put_slice("bad\nkey", b"x", None)
        assert not await store.put_slice("x" * 5000, b"x", None)
        assert not await store.put_slice("big", b"x" * (store.max_payload + 1), None)
        assert not await store.put_slice("old", b"x", time.time() - 1)
        assert await store.get_slice("bad\nkey") is None
    finally:
        await store.close()


async def test_delete_object_prefix_and_clear(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        for obj in ("http://o/a", "http://o/ab", "http://o/b"):
            assert await store.put_meta(obj, b"m", None)
            for i in range(3):
                assert await store.put_slice(f"{obj} v {i}", payload(obj, i, 1000), None)
            assert await store.put_meta(f"{obj} vary:xyz", b"v", None)
        # delete(object) removes the object, its slices and variants, not http://o/ab.
        assert await store.delete("http://o/a") == 5
        assert await store.get_meta("http://o/a") is None
        assert await store.get_slice("http://o/a v 1") is None
        assert await store.get_meta("http://o/ab") == b"m"
        assert await store.delete("http://o/a") == 0
        assert await store.delete_prefix("http://o/a") == 5
        assert sorted(store.keys()) == ["http://o/b"] + [f"http://o/b v {i}" for i in range(3)] + [
            "http://o/b vary:xyz"
        ]
        await store._reap_idle()
        check_consistent(store)
        assert await store.clear() == 5
        assert list(store.keys()) == []
        assert store.stats()["entries"] == 0
        check_consistent(store)
        assert store.stats()["used_blocks"] == 0
        # Still writable after clear.
        assert await store.put_slice("after 0", b"z" * 100, None)
        assert await store.get_slice("after 0") == b"z" * 100
    finally:
        await store.close()


async def test_purge_is_visible_at_once_and_survives_restart(make_settings: Make) -> None:
    settings = make_settings(total_size=32 * MiB)
    store = await RawDiskStore.open(settings)
    for i in range(300):
        assert await store.put_slice(f"http://o/x v {i}", b"d" * 100, None)
        assert await store.put_slice(f"http://o/y v {i}", b"e" * 100, None)
    await store.sync()
    assert await store.delete_prefix("http://o/x") == 300
    assert all([await store.get_slice(f"http://o/x v {i}") is None for i in range(300)])
    await store.sync()
    # Crash before the reaper finished: replay must re-apply the purge.
    await _crash(store)
    store = await RawDiskStore.open(settings)
    try:
        assert await store.get_slice("http://o/x v 5") is None
        assert await store.get_slice("http://o/y v 5") == b"e" * 100
        assert store.stats()["entries"] == 300
        check_consistent(store)
    finally:
        await store.close()


async def test_put_racing_a_delete_is_not_resurrected(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    gate = threading.Event()
    writing = threading.Event()
    original = store._device.write_extent

    def slow_write(parts: Any, offset: int) -> None:
        writing.set()
        gate.wait(30)
        original(parts, offset)

    try:
        store._device.write_extent = slow_write  # type: ignore[method-assign]
        put = asyncio.create_task(store.put_slice("http://o/a v 0", b"stale", None))
        await async_wait_for(writing.is_set, "the put is writing its extent")
        await store.delete("http://o/a")
        gate.set()
        assert not await put
        assert await store.get_slice("http://o/a v 0") is None
        assert store.stats()["discarded_puts_total"] == 1
        check_consistent(store)
    finally:
        gate.set()
        await store.close()


async def test_extent_held_by_a_reader_is_not_recycled(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    gate = threading.Event()
    entered = threading.Event()
    original = store._device.read_extent

    def slow_read(length: int, offset: int) -> bytes:
        entered.set()
        gate.wait(5)
        return original(length, offset)

    try:
        assert await store.put_slice("a 0", b"A" * 50_000, None)
        start_a, blocks_a = store._index.extent_of(store._index.find(b"a 0", _h(b"a 0")))
        store._device.read_extent = slow_read  # type: ignore[method-assign]
        reader = asyncio.create_task(store.get_slice("a 0"))
        await asyncio.to_thread(entered.wait, 5)
        assert await store.delete("a 0") == 1
        store._map.cursor = start_a  # invite reuse of exactly those blocks
        store._device.read_extent = original  # type: ignore[method-assign]
        assert await store.put_slice("b 0", b"B" * 50_000, None)
        start_b, blocks_b = store._index.extent_of(store._index.find(b"b 0", _h(b"b 0")))
        assert start_b >= start_a + blocks_a or start_b + blocks_b <= start_a
        check_consistent(store)
        gate.set()
        # Deleted while being read: not served.
        assert await reader is None
        assert store._map.map[start_a] == 0  # released once the reader finished
        check_consistent(store)
    finally:
        gate.set()
        await store.close()


async def test_map_and_index_are_consistent_while_a_sync_runs(make_settings: Make) -> None:
    """The extents a sync is making allocatable are accounted for while it runs (the
    consistency check raced the background sync: pending_free_blocks counted them, no
    list held them)."""
    store = await RawDiskStore.open(make_settings(sync_interval=30.0))
    gate = threading.Event()
    entered = threading.Event()
    original = store._device.sync_data

    def slow_sync_data() -> None:
        entered.set()
        gate.wait(5)
        original()

    try:
        assert await store.put_slice("a 0", b"A" * 50_000, None)
        await store.sync()
        # Overwritten: the old extent is free once the record saying so is durable.
        assert await store.put_slice("a 0", b"a" * 50_000, None)
        assert store._core.tables.pending_free_blocks > 0
        store._device.sync_data = slow_sync_data  # type: ignore[method-assign]
        syncing = asyncio.create_task(store.sync())
        await asyncio.to_thread(entered.wait, 5)
        check_consistent(store)
        gate.set()
        await syncing
        assert store._core.tables.pending_free_blocks == 0
        check_consistent(store)
    finally:
        gate.set()
        store._device.sync_data = original  # type: ignore[method-assign]
        await store.close()


def _h(key: bytes) -> int:
    from cache.rawdisk.layout import key_hash

    return key_hash(key)


async def test_expiry(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        expires_at = time.time() + 1.2
        assert await store.put_slice("t 0", b"x" * 10, expires_at)
        assert await store.put_slice("t 1", b"y" * 10, None)
        assert await store.get_slice("t 0") == b"x" * 10
        # Expiry has one-second resolution on disk (rounded up).
        await asyncio.sleep(math.ceil(expires_at) - time.time() + 0.1)
        assert await store.get_slice("t 0") is None
        assert "t 0" not in list(store.keys())
        await async_wait_for(lambda: store.stats()["entries"] == 1, "the expired entry reaped")
        assert store.stats()["expired_total"] + store.stats()["expirations_total"] >= 1
    finally:
        await store.close()


async def test_restart_keeps_entries_and_generations(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    for i in range(50):
        assert await store.put_slice(f"k {i}", payload(f"k {i}", 0, 1000 + i), None)
    await store.close()
    store = await RawDiskStore.open(settings)
    try:
        assert store.stats()["replayed_records"] == 0  # close() wrote a checkpoint
        for i in range(50):
            got = await store.get_slice(f"k {i}")
            assert got is not None and bytes(got) == payload(f"k {i}", 0, 1000 + i)
        check_consistent(store)
        assert await store.put_slice("k new", b"n", None)
    finally:
        await store.close()


async def test_sync_then_crash_replays_the_journal(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    for i in range(20):
        assert await store.put_slice(f"k {i}", payload(f"k {i}", 0, 3000), None)
    assert await store.delete("k 3") == 1
    assert await store.delete_prefix("k 1") == 11
    await store.sync()
    await _crash(store)
    store = await RawDiskStore.open(settings)
    try:
        assert store.stats()["replayed_records"] >= 22
        expected = [f"k {i}" for i in range(20) if i != 3 and not str(i).startswith("1")]
        assert sorted(store.keys()) == sorted(expected)
        check_consistent(store)
    finally:
        await store.close()


async def test_checkpoint_mid_run_and_journal_epochs(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    for round_ in range(3):
        for i in range(30):
            assert await store.put_slice(f"k {i}", payload(f"k {i}", round_, 2000), None)
        await store.checkpoint()
    for i in range(10):
        await store.delete(f"k {i}")
    await store.sync()
    await _crash(store)
    store = await RawDiskStore.open(settings)
    try:
        assert len(list(store.keys())) == 20
        for i in range(10, 30):
            got = await store.get_slice(f"k {i}")
            assert got is not None and bytes(got) == payload(f"k {i}", 2, 2000)
        check_consistent(store)
    finally:
        await store.close()


async def test_second_opener_is_refused(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    try:
        with pytest.raises(RawDiskError, match="in use by another process"):
            await RawDiskStore.open(settings)
    finally:
        await store.close()
    again = await RawDiskStore.open(settings)
    await again.close()


async def test_geometry_mismatch_refused_unless_reformat(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    assert await store.put_slice("k 0", b"x", None)
    await store.close()
    with pytest.raises(RawDiskError, match="geometry"):
        await RawDiskStore.open(make_settings(block_size=8192))
    with pytest.raises(RawDiskError, match="REFORMAT"):
        await RawDiskStore.open(make_settings(total_size=32 * MiB))
    store = await RawDiskStore.open(make_settings(total_size=32 * MiB, reformat=True))
    try:
        assert list(store.keys()) == []
        assert store.geometry.total_size == 32 * MiB
        assert store.stats()["format_generation"] == 2
    finally:
        await store.close()


async def test_newer_format_version_refused(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    sb = store._sb
    await store.close()
    from dataclasses import replace

    newer = replace(sb, version=sb.version + 1).pack()
    write_at(settings.device_path, 0, newer)
    write_at(settings.device_path, 4096, newer)
    with pytest.raises(RawDiskError, match="newer than the version"):
        await RawDiskStore.open(settings)
    store = await RawDiskStore.open(make_settings(reformat=True))
    await store.close()


async def test_foreign_file_is_not_overwritten(make_settings: Make) -> None:
    settings = make_settings()
    write_new(settings.device_path, b"precious user data" * 1000)
    with pytest.raises(RawDiskError, match="does not hold a slicecache L2 store"):
        await RawDiskStore.open(settings)
    assert read_at(settings.device_path, 0, 18) == b"precious user data"


async def test_too_little_disk_is_a_clear_startup_error(
    make_settings: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(RawDiskError, match="not enough disk space"):
        await RawDiskStore.open(settings)
    assert not exists(settings.device_path)  # no half-created device left behind


async def test_device_too_small_for_the_layout(make_settings: Make) -> None:
    from cache.rawdisk.layout import compute_geometry

    with pytest.raises(RawDiskError, match="too small"):
        compute_geometry(2 * MiB, 4096)


def _o_direct_works(path: str) -> bool:
    """Can this file be opened with O_DIRECT and read 4 KiB-aligned? (as a raw syscall)"""
    import mmap

    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    buf = mmap.mmap(-1, 4096)
    try:
        os.preadv(fd, [buf], 0)
        return True
    except OSError:
        return False
    finally:
        buf.close()
        os.close(fd)


async def test_direct_io_really_used_or_explained(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings(use_direct_io=True))
    try:
        assert await store.put_slice("d 0", payload("d 0", 0, 123_457), None)
        got = await store.get_slice("d 0")
        assert got is not None and bytes(got) == payload("d 0", 0, 123_457)
        # Whether this filesystem takes O_DIRECT, found out independently of the store: the
        # store must use it exactly when it can, and say why not otherwise.
        possible = _o_direct_works(settings_path := make_settings().device_path)
        assert store.stats()["direct_io"] == possible, (settings_path, store.direct_io_reason)
        if possible:
            assert fd_flags(store._device.data_fd) & os.O_DIRECT
        else:
            assert "O_DIRECT" in store.direct_io_reason
    finally:
        await store.close()
    store = await RawDiskStore.open(
        make_settings(use_direct_io=True, block_size=512, reformat=True)
    )
    try:
        assert not store.stats()["direct_io"]
        assert "multiple of 4096" in store.direct_io_reason
    finally:
        await store.close()


async def test_direct_writes_and_mapped_reads_agree_over_a_recycled_extent(
    make_settings: Make,
) -> None:
    """With O_DIRECT the extents are written past the page cache but still read through
    the shared mapping: a recycled extent whose old bytes were read (cached and mapped)
    must read as its new record, never the old one."""
    store = await RawDiskStore.open(make_settings(use_direct_io=True))
    try:
        if not store.stats()["direct_io"]:
            pytest.skip(f"this filesystem takes no O_DIRECT: {store.direct_io_reason}")
        size = 300_000
        assert await store.put_slice("old 0", payload("old 0", 0, size), None)
        lease = await store.lease_slice("old 0")  # faults the extent in through the mapping
        assert lease is not None and bytes(lease.view) == payload("old 0", 0, size)
        old_start = store._index.extent_of(store._index.find(b"old 0", key_hash(b"old 0")))[0]
        lease.release()
        assert await store.delete("old 0") == 1
        # Write and drop records until the allocator comes round to the old blocks (freed
        # blocks are allocatable once their delete is durable: the sync).
        for attempt in range(1000):
            await store.sync()
            key = f"new {attempt}"
            assert await store.put_slice(key, payload(key, 0, size), None)
            start = store._index.extent_of(store._index.find(key.encode(), key_hash(key.encode())))
            if start[0] == old_start:
                break
            assert await store.delete(key) == 1
        else:
            pytest.fail("the old extent was never reused")
        for _ in range(2):  # from the disk, then from the page cache it was read into
            lease = await store.lease_slice(key)
            assert lease is not None and bytes(lease.view) == payload(key, 0, size)
            lease.release()
        assert store.stats()["checksum_failures_total"] == 0
    finally:
        await store.close()


async def test_compression_when_it_pays(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings(enable_compression=True))
    try:
        text = b"the quick brown fox jumps over the lazy dog " * 5000
        noise = os.urandom(200_000)
        assert await store.put_slice("c 0", text, None)
        assert await store.put_slice("c 1", noise, None)
        assert await store.put_slice("c 2", text, None, compressible=False)
        index = store._index

        def codec_of(key: str) -> int:
            return index.entry(index.find(key.encode(), _h(key.encode()))).codec

        assert codec_of("c 0") == CODEC_ZSTD
        assert codec_of("c 1") == 0
        assert codec_of("c 2") == 0
        assert await store.get_slice("c 0") == text
        assert await store.get_slice("c 1") == noise
        stats = store.stats()
        assert stats["compressed_writes_total"] == 1
        assert stats["compression_skipped_total"] == 1
        assert stats["compression_ratio"] > 1.5
    finally:
        await store.close()


async def test_eviction_keeps_usage_under_the_high_watermark(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        capacity = store.stats()["capacity_bytes"]
        stored = 0
        for i in range(int(capacity * 2 // 40_000)):
            key = f"e {i}"
            for _ in range(2):  # asked for twice: passes the admission filter
                await store.get_slice(key)
            if await store.put_slice(key, b"e" * 40_000, None):
                stored += 1
        # Eviction runs in the background: wait for it to bring usage under the mark.
        await async_wait_for(lambda: store.stats()["usage_ratio"] <= 0.96, "usage under 96 %")
        stats = store.stats()
        assert stored > capacity // 40_000  # it kept accepting by evicting
        assert stats["evictions_total"] > 0
        assert stats["usage_ratio"] <= 0.96
        check_consistent(store)
    finally:
        await store.close()


async def test_admission_filter_protects_hot_entries_from_one_hit_wonders(
    make_settings: Make,
) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        capacity = int(store.stats()["capacity_bytes"])
        size = 40_000
        hot = [f"hot {i}" for i in range(int(capacity * 0.5) // size)]
        for key in hot:
            assert await store.put_slice(key, b"h" * size, None)
        for _ in range(3):
            for key in hot:
                assert await store.get_slice(key) is not None
        # A scan of never-repeated keys, far larger than the device.
        for i in range(capacity * 2 // size):
            await store.get_slice(f"once {i}")
            await store.put_slice(f"once {i}", b"o" * size, None)
        await store._drain()  # background drops scheduled by the reads are done
        survivors = sum([await store.get_slice(k) is not None for k in hot])
        assert survivors >= 0.9 * len(hot)
        assert store.stats()["admission_rejects_total"] > 0
    finally:
        await store.close()


async def test_concurrent_puts_gets_deletes_stay_consistent(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings(total_size=32 * MiB))
    try:
        served = 0

        async def worker(n: int) -> None:
            nonlocal served
            for i in range(60):
                key = f"w{n % 3} {i % 17}"
                data = payload(key, i, 1000 + 97 * i)
                await store.put_slice(key, data, None)
                got = await store.get_slice(key)
                # None is allowed (another worker deleted the key in between); wrong or
                # torn bytes never are.
                if got is not None:
                    assert check_payload(key, bytes(got)), key
                    served += 1
                if i % 13 == 0:
                    await store.delete_prefix(f"w{n % 3} 1")

        await asyncio.gather(*(worker(n) for n in range(6)))
        assert served > 60, served  # most reads found their key: the check above ran
        await store._reap_idle()
        check_consistent(store)
    finally:
        await store.close()


async def test_stats_keys_are_prometheus_friendly(make_settings: Make) -> None:
    import re

    store = await RawDiskStore.open(make_settings())
    try:
        await store.put_slice("s 0", b"x" * 100, None)
        await store.get_slice("s 0")
        await store.sync()
        await store.checkpoint()
        stats = store.stats()
        for key, value in stats.items():
            assert re.fullmatch(r"[a-z][a-z0-9_]*", key)
            assert isinstance(value, float)
        assert stats["journal_syncs_total"] >= 1
        assert stats["checkpoints_total"] >= 1
        assert stats["checkpoint_seconds_last"] > 0
    finally:
        await store.close()


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "put", "delete", "prefix", "sync", "restart"]),
            st.integers(0, 11),
            st.integers(0, 60_000),
        ),
        max_size=40,
    )
)
def test_random_operations_keep_map_and_index_consistent(
    make_settings: Make, operations: list[tuple[str, int, int]]
) -> None:
    settings = make_settings(reformat=True)

    async def run() -> None:
        store = await RawDiskStore.open(settings)
        model: dict[str, bytes] = {}
        try:
            for n, (op, k, size) in enumerate(operations):
                key = f"o{k % 4} {k}"
                if op == "put":
                    data = payload(key, n, size)
                    if await store.put_slice(key, data, None):
                        model[key] = data
                elif op == "delete":
                    removed = await store.delete(f"o{k % 4}")
                    doomed = [x for x in model if x.startswith(f"o{k % 4} ")]
                    assert removed == len(doomed)
                    for x in doomed:
                        del model[x]
                elif op == "prefix":
                    removed = await store.delete_prefix(f"o{k % 4} 1")
                    doomed = [x for x in model if x.startswith(f"o{k % 4} 1")]
                    assert removed == len(doomed)
                    for x in doomed:
                        del model[x]
                elif op == "sync":
                    await store.sync()
                else:
                    await store.close()
                    store = await RawDiskStore.open(settings)
                check_consistent(store)
                assert sorted(store.keys()) == sorted(model)
            for key, data in model.items():
                got = await store.get_slice(key)
                assert got is not None and bytes(got) == data
        finally:
            await store.close()

    # Each example starts from a fresh device.
    if os.path.exists(settings.device_path):
        os.unlink(settings.device_path)
    asyncio.run(run())


async def _crash(store: RawDiskStore) -> None:
    """Stop a store as a kill -9 would: no checkpoint, no final sync, lock released."""
    await store._abandon()


@pytest.mark.parametrize("purge", ["object", "prefix", "all"])
async def test_a_purge_waiting_for_the_l2_locks_already_hides_what_it_covers(
    make_settings: Make, purge: str
) -> None:
    """helper-64: a PURGE clears L1 at once, while L2's delete waits for L2's locks (a sync
    holds them through an fdatasync). A read in that wait found the old entry in L2 and
    promoted it back into L1: after the PURGE was answered, the purged version was served
    again for its whole max-age. Reads in the wait answer nothing for what it covers, and
    nothing comes back once it ran."""
    l2 = await RawDiskStore.open(make_settings())
    front = TieredStore(MemoryStore(MiB), l2)
    url, slice_key, other = "http://o/a", "http://o/a v 0", "http://o/b v 0"
    try:
        assert await l2.put_meta(url, b"old meta", None)
        for key in (slice_key, other):
            assert await l2.put_slice(key, payload(key, 0, 9000), None)
        core = l2._core
        async with core.persist, core.mutate:  # what a sync in progress holds
            if purge == "object":
                running = asyncio.create_task(front.delete(url))
            elif purge == "prefix":
                running = asyncio.create_task(front.delete_prefix("http://o/a"))
            else:
                running = asyncio.create_task(front.clear())
            await asyncio.sleep(0.05)
            assert not running.done()  # L2's delete is waiting for the locks
            assert await front.get_meta(url) is None
            assert await front.get_slice(slice_key) is None
            assert await front.lease_slice(slice_key) is None
            if purge != "all":  # what it does not cover is still served
                assert await front.get_slice(other) == payload(other, 0, 9000)
            assert front.counters["stale_reads_discarded"] == 3  # counted, not silent
        assert await asyncio.wait_for(running, 10) >= 2
        assert await front.get_meta(url) is None
        assert await front.get_slice(slice_key) is None
        assert front.l1 is not None and await front.l1.get_meta(url) is None
        assert l2.stats()["leases"] == 0
    finally:
        await front.close()
