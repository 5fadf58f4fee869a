"""Resident records are verified on the event loop, cold ones in the worker thread
(cache/rawdisk/residency.py, ReadPath.lease): both with the same checks."""

from __future__ import annotations

import mmap
from collections.abc import Callable
from pathlib import Path

from cache import keys
from cache.rawdisk import RawDiskStore
from cache.rawdisk.residency import PAGE, Residency, address_of
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import flip_byte, payload, read_counts
from tests.rawdisk.test_corruption import _extent_offset

Make = Callable[..., RawDiskCacheSettings]
SIZE = 300_000


async def _stored(store: RawDiskStore, name: str) -> str:
    """Slice 0 of object ``name`` (SIZE bytes of ``payload(name)``), asked for until L2's
    admission takes it, then stored; its key."""
    key = keys.slice_key(f"http://o:80/{name}.bin", "v1", 0)
    for _ in range(3):
        assert await store.get_slice(key) is None
    assert await store.put_slice(key, payload(name, 0, SIZE), None)
    return key


def _sparse_mapping(path: Path, pages: int) -> mmap.mmap:
    with open(path, "wb") as f:
        f.truncate(pages * PAGE)  # a hole: no page of it is in memory until read
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), pages * PAGE, mmap.MAP_SHARED, mmap.PROT_READ)


def test_the_mapping_address_is_where_the_bytes_are(tmp_path: Path) -> None:
    path = tmp_path / "d.bin"
    path.write_bytes(b"abc" + bytes(PAGE - 3))
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
    import ctypes

    address = address_of(mapped)
    assert address is not None
    assert ctypes.string_at(address, 3) == b"abc"
    mapped.close()
    assert address_of(mapped) is None


def test_a_range_is_resident_only_when_its_pages_were_read(tmp_path: Path) -> None:
    mapped = _sparse_mapping(tmp_path / "d.bin", 1024)
    mapped.madvise(mmap.MADV_RANDOM)  # no read-around: only what is read comes in
    residency = Residency(mapped)
    assert not residency.resident(0, 1024 * PAGE)
    for page in range(100, 120):
        assert mapped[page * PAGE] == 0  # read in
    assert residency.resident(100 * PAGE, 20 * PAGE)
    assert residency.resident(100 * PAGE + 5, PAGE)  # unaligned, over two read pages
    assert not residency.resident(900 * PAGE, PAGE)
    assert not residency.resident(110 * PAGE, 800 * PAGE)  # partly read: not resident
    assert not residency.resident(1023 * PAGE, 2 * PAGE)  # past the end: never
    mapped.close()
    assert not residency.resident(100 * PAGE, PAGE)  # closed: never


async def test_resident_records_are_checked_on_the_loop_cold_ones_in_the_thread(
    make_settings: Make,
) -> None:
    store = await RawDiskStore.open(make_settings(use_direct_io=False))
    try:
        key = await _stored(store, "r")
        lease = await store.lease_slice(key)  # just written, buffered: in the page cache
        assert lease is not None and bytes(lease.view) == payload("r", 0, SIZE)
        lease.release()
        assert store.stats()["resident_reads_total"] == 1
        store._reads._resident = lambda *_: False  # type: ignore[method-assign]
        lease = await store.lease_slice(key)
        assert lease is not None and bytes(lease.view) == payload("r", 0, SIZE)
        lease.release()
        assert store.stats()["resident_reads_total"] == 1
        assert store.stats()["reads_total"] == 2
    finally:
        await store.close()


async def test_a_direct_write_leaves_nothing_resident_and_its_first_read_reads_it_in(
    make_settings: Make,
) -> None:
    """With O_DIRECT (the default) a write bypasses the page cache: the first lease of the
    extent is read in and checked by the worker thread, the next one is resident."""
    store = await RawDiskStore.open(make_settings())
    try:
        assert store.stats()["direct_io"] == 1.0
        key = await _stored(store, "d")
        for resident_reads in (0, 1):
            lease = await store.lease_slice(key)
            assert lease is not None and bytes(lease.view) == payload("d", 0, SIZE)
            lease.release()
            assert store.stats()["resident_reads_total"] == resident_reads
    finally:
        await store.close()


async def test_a_damaged_resident_record_is_never_leased(make_settings: Make) -> None:
    """The loop's check is the thread's: a flipped byte in a resident extent is a miss,
    counted, and the entry is dropped."""
    store = await RawDiskStore.open(make_settings(enable_compression=False, use_direct_io=False))
    try:
        key = await _stored(store, "bad")
        flip_byte(make_settings().device_path, _extent_offset(store, key) + 4096)
        assert await store.lease_slice(key) is None
        stats = store.stats()
        assert stats["checksum_failures_total"] == 1
        assert stats["resident_reads_total"] == 1
        assert await store.lease_slice(key) is None  # dropped, not read again
    finally:
        await store.close()


def _counted_since(before: dict[str, float], store: RawDiskStore) -> dict[str, float]:
    """What each read counter gained since ``before`` (the ones that moved)."""
    after = read_counts(store.stats())
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


async def test_a_lease_now_is_a_lease_counted_the_same_and_a_residency_check_counts_nothing(
    make_settings: Make,
) -> None:
    """The fast path's synchronous read (app/fasthit.py) is lease_slice's: the same bytes,
    the same counters, the extent pinned until released."""
    store = await RawDiskStore.open(make_settings(use_direct_io=False))
    try:
        key = await _stored(store, "now")
        before = read_counts(store.stats())
        lease = await store.lease_slice(key)
        assert lease is not None
        lease.release()
        by_lease = _counted_since(before, store)
        assert by_lease["resident_reads_total"] == 1
        before = read_counts(store.stats())
        assert store.slice_resident_now(key)
        assert _counted_since(before, store) == {}
        lease = store.lease_slice_now(key)
        assert lease is not None and bytes(lease.view) == payload("now", 0, SIZE)
        assert store.stats()["leases"] == 1  # pinned while held
        lease.release()
        assert store.stats()["leases"] == 0
        assert _counted_since(before, store) == by_lease
    finally:
        await store.close()


async def test_only_a_visible_in_memory_slice_is_resident_now(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings())  # O_DIRECT: written past the page cache
    try:
        assert not store.slice_resident_now(keys.slice_key("http://o:80/cold.bin", "v1", 0))
        key = await _stored(store, "cold")
        assert not store.slice_resident_now(key)  # stored, not in memory
        lease = await store.lease_slice(key)  # read in by the worker thread
        assert lease is not None
        lease.release()
        assert store.slice_resident_now(key)
        assert await store.delete(keys.object_key_of(key)) == 1
        assert not store.slice_resident_now(key)  # deleted: invisible at once
        assert store.lease_slice_now(key) is None
    finally:
        await store.close()


async def test_a_damaged_record_is_never_leased_now(make_settings: Make) -> None:
    store = await RawDiskStore.open(make_settings(enable_compression=False, use_direct_io=False))
    try:
        key = await _stored(store, "badnow")
        flip_byte(make_settings().device_path, _extent_offset(store, key) + 4096)
        assert store.slice_resident_now(key)  # the check reads no byte of the payload
        assert store.lease_slice_now(key) is None
        stats = store.stats()
        assert stats["checksum_failures_total"] == 1
        assert stats["leases"] == 0  # nothing left pinned
        assert not store.slice_resident_now(key)  # flagged bad: not visible any more
    finally:
        await store.close()
