"""Damage in the data area, journal, checkpoints and superblock is detected, never served."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache.rawdisk import RawDiskError, RawDiskStore, journal
from cache.rawdisk.checkpoint import HEADER_SIZE
from cache.rawdisk.layout import RECORD_HEADER_SIZE, key_hash
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import check_consistent, check_payload, flip_byte, payload, read_at
from tests.rawdisk.test_store import _crash

Make = Callable[..., RawDiskCacheSettings]


def _extent_offset(store: RawDiskStore, key: str) -> int:
    index = store._index
    row = index.find(key.encode(), key_hash(key.encode()))
    start, _ = index.extent_of(row)
    return store.geometry.block_offset(start)


async def _all_reads_are_right_or_absent(store: RawDiskStore, keys: list[str]) -> int:
    served = 0
    for key in keys:
        got = await store.get_slice(key)
        if got is not None:
            assert check_payload(key, bytes(got)), f"{key} served wrong bytes"
            served += 1
    return served


@pytest.mark.parametrize("where", ["payload", "header", "key"])
async def test_damaged_extent_is_dropped_and_counted(make_settings: Make, where: str) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    for i in range(5):
        assert await store.put_slice(f"k {i}", payload(f"k {i}", 0, 20_000), None)
    offset = _extent_offset(store, "k 2")
    await store.close()
    delta = {"payload": RECORD_HEADER_SIZE + 3 + 5000, "header": 20, "key": RECORD_HEADER_SIZE}
    flip_byte(settings.device_path, offset + delta[where])
    store = await RawDiskStore.open(settings)
    try:
        assert await store.get_slice("k 2") is None
        stats = store.stats()
        assert stats["checksum_failures_total"] == 1
        await store._drain()
        assert "k 2" not in list(store.keys())
        assert store.stats()["entries"] == 4
        assert await _all_reads_are_right_or_absent(store, [f"k {i}" for i in range(5)]) == 4
        check_consistent(store)
    finally:
        await store.close()


async def test_recycled_extent_after_a_crash_is_not_served(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    assert await store.put_slice("a 0", payload("a 0", 0, 30_000), None)
    await store.sync()
    row = store._index.find(b"a 0", key_hash(b"a 0"))
    start = store._index.extent_of(row)[0]
    # A reuse that got ahead of the record freeing the blocks (what deferred frees and a
    # synced delete prevent) must still be caught on read by the record header.
    tables = store._core.tables
    tables.defer_frees = False
    async with store._core.mutate:
        store._persistence.journal(tables.drop(row))
    store._map.cursor = start
    assert await store.put_slice("b 0", payload("b 0", 0, 30_000), None)
    assert store._index.extent_of(store._index.find(b"b 0", key_hash(b"b 0")))[0] == start
    await _crash(store)  # the delete and the put were never synced: the index still says "a 0"
    store = await RawDiskStore.open(settings)
    try:
        assert sorted(store.keys()) == ["a 0"]
        assert await store.get_slice("a 0") is None
        assert store.stats()["checksum_failures_total"] == 1
        assert await store.put_slice("c 0", payload("c 0", 0, 10), None)
        await store._drain()
        check_consistent(store)
    finally:
        await store.close()


async def test_damaged_journal_record_stops_replay_there(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    keys = [f"j {i}" for i in range(30)]
    for key in keys:
        assert await store.put_slice(key, payload(key, 0, 3000), None)
    await store.sync()
    epoch = store._epoch
    half = store.geometry.journal_half(epoch)
    fmt = store._format_id
    await _crash(store)
    data = read_at(settings.device_path, half, store.geometry.journal_half_size)
    ends = [end for end, *_ in journal.scan(data, fmt, epoch, 0)]
    assert len(ends) == 30
    flip_byte(settings.device_path, half + ends[14] + 30)  # inside record 15
    store = await RawDiskStore.open(settings)
    try:
        assert store.stats()["replayed_records"] == 15
        assert sorted(store.keys()) == sorted(keys[:15])
        assert await _all_reads_are_right_or_absent(store, keys) == 15
        assert await store.put_slice("j new", payload("j new", 0, 100), None)
        check_consistent(store)
    finally:
        await store.close()
    store = await RawDiskStore.open(settings)
    try:
        assert "j new" in list(store.keys())
    finally:
        await store.close()


async def test_damaged_checkpoint_falls_back_to_the_older_one(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    first = [f"a {i}" for i in range(20)]
    second = [f"b {i}" for i in range(20)]
    for key in first:
        assert await store.put_slice(key, payload(key, 0, 2000), None)
    await store.checkpoint()
    for key in second:
        assert await store.put_slice(key, payload(key, 0, 2000), None)
    latest = store.geometry.checkpoint_slot((store._ckpt_seq + 1) % 2)
    await store.close()  # writes the next checkpoint into `latest`
    flip_byte(settings.device_path, latest + HEADER_SIZE + 100)  # inside its rows
    store = await RawDiskStore.open(settings)
    try:
        # The older checkpoint plus its journal epoch rebuild everything.
        assert sorted(store.keys()) == sorted(first + second)
        assert await _all_reads_are_right_or_absent(store, first + second) == 40
        check_consistent(store)
    finally:
        await store.close()


async def test_both_checkpoints_damaged_starts_empty(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    for i in range(10):
        assert await store.put_slice(f"k {i}", payload(f"k {i}", 0, 2000), None)
    await store.checkpoint()
    geometry = store.geometry
    await store.close()
    for slot in (0, 1):
        flip_byte(settings.device_path, geometry.checkpoint_slot(slot) + 12)  # header
    store = await RawDiskStore.open(settings)
    try:
        assert store.stats()["index_recoveries"] == 1
        assert list(store.keys()) == []
        assert await store.put_slice("k new", b"x", None)
        check_consistent(store)
    finally:
        await store.close()
    store = await RawDiskStore.open(settings)
    try:
        assert list(store.keys()) == ["k new"]
    finally:
        await store.close()


async def test_superblock_damage(make_settings: Make) -> None:
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    assert await store.put_slice("k 0", b"x" * 10, None)
    await store.close()
    flip_byte(settings.device_path, 40)
    store = await RawDiskStore.open(settings)  # the backup copy is used and the primary rewritten
    try:
        assert store.stats()["superblock_repairs"] == 1
        assert await store.get_slice("k 0") == b"x" * 10
    finally:
        await store.close()
    flip_byte(settings.device_path, 40)
    flip_byte(settings.device_path, 4096 + 40)
    with pytest.raises(RawDiskError, match="superblock is damaged"):
        await RawDiskStore.open(settings)
    store = await RawDiskStore.open(make_settings(reformat=True))
    try:
        assert list(store.keys()) == []
    finally:
        await store.close()


async def test_a_storm_of_damaged_records_is_counted_each_and_logged_once_per_interval(
    make_settings: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing device fails every read: each is counted, but the log gets one line per
    interval (the first at once, naming its key), not one per read from the event loop."""
    import logging

    settings = make_settings()
    store = await RawDiskStore.open(settings)
    keys = [f"k {i}" for i in range(12)]
    for key in keys:
        assert await store.put_slice(key, payload(key, 0, 20_000), None)
    offsets = [_extent_offset(store, key) for key in keys]
    await store.close()
    for offset in offsets:
        flip_byte(settings.device_path, offset + RECORD_HEADER_SIZE + 100)
    store = await RawDiskStore.open(settings, warning_interval=3600)
    try:
        with caplog.at_level(logging.WARNING, logger="slicecache.rawdisk"):
            assert await _all_reads_are_right_or_absent(store, keys) == 0
        assert store.stats()["checksum_failures_total"] == len(keys)
        lines = [r for r in caplog.records if "failed verification" in r.getMessage()]
        assert len(lines) == 1 and "'k 0'" in lines[0].getMessage()
        # The next line (after the interval) says how many were folded into it.
        assert store._core.warnings._folded == {"l2_checksum_failure": len(keys) - 1}
    finally:
        await store.close()
