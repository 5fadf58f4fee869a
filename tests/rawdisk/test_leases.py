"""Extent leases: an L2 slice read without a copy stays the version read, and its extent is
reused only after the last lease on it is released (cache/rawdisk/reads.py)."""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Callable

from cache import keys
from cache.memory import MemoryStore
from cache.protocol import SliceLease, borrowed
from cache.rawdisk import RawDiskStore
from cache.tiered import TieredStore
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import (
    check_consistent,
    check_payload,
    flip_byte,
    payload,
    read_counts,
)
from tests.rawdisk.test_corruption import _extent_offset

Make = Callable[..., RawDiskCacheSettings]
SIZE = 200_000


def _extent(store: RawDiskStore, key: str) -> tuple[int, int]:
    from cache.rawdisk.layout import key_hash

    index = store._index
    row = index.find(key.encode(), key_hash(key.encode()))
    assert row >= 0
    return index.extent_of(row)


async def _churn(store: RawDiskStore, prefix: str, count: int) -> None:
    """Write ``count`` new keys; each is looked up first, as a miss would be, so that the
    admission policy takes them (and evicts to make room)."""
    for i in range(count):
        await _churn_one(store, f"{prefix} {i}")


async def _churn_one(store: RawDiskStore, key: str) -> None:
    for _ in range(3):
        assert await store.get_slice(key) is None
    await store.put_slice(key, payload(key, 0, SIZE), None)


async def _lease(store: RawDiskStore, key: str) -> SliceLease:
    lease = await store.lease_slice(key)
    assert lease is not None
    assert borrowed(lease.view) and isinstance(lease.view.obj, mmap.mmap)  # no copy
    assert lease.pinned
    return lease


async def test_a_lease_is_a_view_of_the_mapping_and_is_counted(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        assert await store.put_slice("k", payload("k", 0, SIZE), None)
        with await _lease(store, "k") as lease:
            assert bytes(lease.view) == payload("k", 0, SIZE)
            assert store.stats()["leases"] == 1
            second = await _lease(store, "k")
            assert store.stats()["leases"] == 2
            second.release()
            second.release()  # idempotent
            assert store.stats()["leases"] == 1
        assert store.stats()["leases"] == 0
        assert not store._core.tables.readers
        assert await store.lease_slice("missing") is None
        check_consistent(store)
    finally:
        await store.close()


async def test_a_lease_pins_its_extent_through_overwrite_purge_and_eviction(
    make_settings: Make,
) -> None:
    """The key disappears (or changes) at once; the leased bytes stay the old version while
    a 16 MiB store is churned several times over, and the extent is reused only after
    release."""
    store = await RawDiskStore.open(make_settings(total_size=16 << 20))
    try:
        assert await store.put_slice("k", payload("k", 0, SIZE), None)
        start, nblocks = _extent(store, "k")
        overwritten = await _lease(store, "k")
        assert await store.put_slice("k", payload("k", 1, SIZE), None)  # overwrite
        got = await store.get_slice("k")
        assert got is not None and bytes(got) == payload("k", 1, SIZE)
        purged = await _lease(store, "k")
        assert await store.delete_prefix("k") == 1  # purge: invisible at once
        assert await store.lease_slice("k") is None
        assert await store.get_slice("k") is None
        # Eviction pressure: write the whole store over several times.
        await _churn(store, "other", 300)
        await store.sync()  # the frees of the churn become durable, hence allocatable
        await store._reap_idle()
        assert store.stats()["evictions_total"] > 0
        assert bytes(overwritten.view) == payload("k", 0, SIZE)
        assert bytes(purged.view) == payload("k", 1, SIZE)
        held = store._core.tables.held_by_readers
        assert len(held) == 2, held  # both extents freed, held for their leases
        assert start in held
        check_consistent(store)
        overwritten.release()
        purged.release()
        assert store.stats()["leases"] == 0
        assert not store._core.tables.held_by_readers
        # Released: the blocks are allocatable again and get reused. Each new key's extent
        # is looked at right after its put (a key that took the blocks may be evicted
        # again by the end of the churn, which made a check at the end fail now and then).
        reused = False
        for i in range(300):
            key = f"again {i}"
            await _churn_one(store, key)
            if key in set(store.keys()):
                first, length = _extent(store, key)
                reused = reused or first <= start < first + length
            if i % 20 == 19:
                await store.sync()  # evicted space becomes allocatable once durable
        assert reused, "the released extent was never allocated again"
        check_consistent(store)
    finally:
        await store.close()


async def test_clear_under_a_lease_keeps_the_bytes(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())
    try:
        assert await store.put_slice("k", payload("k", 0, SIZE), None)
        lease = await _lease(store, "k")
        await store.clear()
        await _churn(store, "n", 200)
        await store.sync()
        assert bytes(lease.view) == payload("k", 0, SIZE)
        lease.release()
        assert store.stats()["leases"] == 0
        check_consistent(store)
    finally:
        await store.close()


async def test_a_damaged_extent_is_never_leased(make_settings: Make) -> None:
    """The checksum is verified over the mapped view: damage written to the device while
    the store runs (the mapping is MAP_SHARED, so it sees it) is caught, counted, dropped."""
    settings = make_settings()
    store = await RawDiskStore.open(settings)
    try:
        for i in range(3):
            assert await store.put_slice(f"k {i}", payload(f"k {i}", 0, 20_000), None)
        await store.sync()
        offset = _extent_offset(store, "k 1")
        from cache.rawdisk.layout import RECORD_HEADER_SIZE

        flip_byte(settings.device_path, offset + RECORD_HEADER_SIZE + 3 + 7000)
        assert await store.lease_slice("k 1") is None
        assert store.stats()["checksum_failures_total"] == 1
        assert store.stats()["leases"] == 0
        await store._drain()
        assert "k 1" not in list(store.keys())
        for key in ("k 0", "k 2"):
            with await _lease(store, key) as lease:
                assert check_payload(key, bytes(lease.view))
        check_consistent(store)
    finally:
        await store.close()


async def test_a_compressed_entry_is_leased_as_a_private_copy(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings(enable_compression=True))
    try:
        data = b"abcdefgh" * 50_000
        assert await store.put_slice("z", data, None, compressible=True)
        assert store.stats()["compressed_writes_total"] == 1
        lease = await store.lease_slice("z")
        assert lease is not None and not lease.pinned and not borrowed(lease.view)
        assert bytes(lease.view) == data
        assert store.stats()["leases"] == 0  # nothing pinned: decoded into its own buffer
        # Decoded in the worker thread, not on the loop, though every page is in memory.
        assert store.stats()["resident_reads_total"] == 0
        lease.release()
    finally:
        await store.close()


async def test_tiered_lease_survives_a_purge_in_flight_and_does_not_promote_big_objects(
    make_settings: Make,
) -> None:
    l2 = await RawDiskStore.open(make_settings())
    front = TieredStore(MemoryStore(8 << 20), l2)
    try:
        key = keys.slice_key("http://o:80/a.bin", "v1", 0)
        assert await l2.put_slice(key, payload("a", 0, SIZE), None)
        # An object of 4 MiB is half of this L1: served from L2, not copied into L1.
        lease = await front.lease_slice(key, size_hint=4 << 20)
        assert lease is not None and lease.pinned
        assert front.counters["l1_promotions"] == 0
        lease.release()
        # A small object is promoted (a copy: L1 never holds a view of the mapping).
        lease = await front.lease_slice(key, size_hint=SIZE)
        assert lease is not None
        assert front.counters["l1_promotions"] == 1
        cached = await front.l1.get_slice(key)  # type: ignore[union-attr]
        assert cached is not None and not borrowed(cached)
        lease.release()
        assert l2.stats()["leases"] == 0
        # A purge while the L2 read is in flight: the lease is dropped, not served. (A
        # resident record is verified on the loop, with no window; a cold one goes to the
        # worker thread, as here.)
        l2._reads._resident = lambda *_: False  # type: ignore[method-assign]
        await front.l1.clear()  # type: ignore[union-attr]
        reader = asyncio.create_task(front.lease_slice(key, size_hint=SIZE))
        await asyncio.sleep(0)
        await front.delete("http://o:80/a.bin")
        assert await reader is None
        assert l2.stats()["leases"] == 0
    finally:
        await front.close()


async def test_tiered_lease_now_answers_only_what_lease_slice_would_without_io_or_promotion(
    make_settings: Make,
) -> None:
    """The fast path's synchronous read (TieredStore.lease_slice_now): counted as
    lease_slice counts its L2 hit; None, counted nowhere, whenever lease_slice would do
    something else (promote, answer from L1 or the write-behind queue, race a purge whose
    L2 deletes still run) or would need I/O."""
    l2 = await RawDiskStore.open(make_settings(use_direct_io=False))
    l1 = MemoryStore(8 << 20)
    front = TieredStore(l1, l2)
    big = 4 << 20  # half of this L1: never promoted
    try:
        key = keys.slice_key("http://o:80/n.bin", "v1", 0)
        assert await l2.put_slice(key, payload("n", 0, SIZE), None)

        def counted() -> dict[str, float]:
            totals = read_counts(l2.stats())
            return {**front.counters, "l1_hits": l1.hits, "l1_misses": l1.misses, **totals}

        def gained(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
            return {
                name: after[name] - before[name] for name in after if after[name] != before[name]
            }

        lease = await front.lease_slice(key, size_hint=big)
        assert lease is not None and lease.pinned
        lease.release()
        before = counted()
        lease = await front.lease_slice(key, size_hint=big)
        assert lease is not None
        lease.release()
        by_lease_slice = gained(before, counted())
        assert by_lease_slice["slice_hits_l2"] == 1 and by_lease_slice["l1_misses"] == 1
        before = counted()
        lease = front.lease_slice_now(key, big)
        assert lease is not None and lease.pinned and bytes(lease.view) == payload("n", 0, SIZE)
        lease.release()
        assert gained(before, counted()) == by_lease_slice
        assert l2.stats()["leases"] == 0

        quiet = counted()
        assert front.lease_slice_now(key, SIZE) is None  # lease_slice would promote it
        front._pending[key] = b"queued"
        assert front.lease_slice_now(key, big) is None  # the queued bytes answer
        del front._pending[key]
        front._purges_running.append(lambda _key: True)
        assert front.lease_slice_now(key, big) is None  # a purge's L2 delete still runs
        front._purges_running.clear()
        l2._reads._resident = lambda *_: False  # type: ignore[method-assign]
        assert front.lease_slice_now(key, big) is None  # would need a read from the disk
        assert counted() == quiet
        assert await l1.put_slice(key, payload("n", 0, SIZE), None)
        assert front.lease_slice_now(key, big) is None  # L1 holds it: the L1 hit's path
        assert counted() == quiet
        assert l2.stats()["leases"] == 0
    finally:
        await front.close()
