"""A crash at every write and fsync of the store leaves a device that reopens consistent.

The store runs a scripted workload while a recording device logs every write and every
fdatasync. For each point of that log a crash image is built: everything written before
the last fdatasync is on disk, and of the writes after it, none, all, only the metadata
(journal, checkpoint) or only the data extents (the page cache may write back in any
order). Each image must reopen with: block map matching the index, every indexed record
verifying (what `verify` checks), no wrong byte, every acknowledged write present and no
acknowledged delete undone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from cache.rawdisk import RawDiskStore
from cache.rawdisk.index import FLAG_USED
from cache.rawdisk.store import _BAD
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB, check_consistent, check_payload, payload

SIZE = 16 * MiB
POLICIES = ("none", "all", "meta", "data")


@dataclass
class Recording:
    ops: list[tuple[int, bytes] | None] = field(default_factory=list)  # None = fdatasync
    # (ops count when acknowledged, key, version or None for deleted)
    acks: list[tuple[int, str, int | None]] = field(default_factory=list)
    # (ops count when issued, key) of deletes: from then on the key may be gone
    issued: list[tuple[int, str]] = field(default_factory=list)


def _record(store: RawDiskStore, rec: Recording) -> None:
    device = store._device
    pwrite, write_extent = device.pwrite, device.write_extent
    sync_meta, sync_data = device.sync_meta, device.sync_data

    def rec_pwrite(data: Any, offset: int) -> None:
        rec.ops.append((offset, bytes(data)))
        pwrite(data, offset)

    def rec_write_extent(parts: list[Any], offset: int) -> None:
        rec.ops.append((offset, b"".join(bytes(p) for p in parts)))
        write_extent(parts, offset)

    def rec_sync(fn: Callable[[], None]) -> Callable[[], None]:
        def sync() -> None:
            fn()
            rec.ops.append(None)

        return sync

    device.pwrite = rec_pwrite  # type: ignore[method-assign]
    device.write_extent = rec_write_extent  # type: ignore[method-assign]
    device.sync_meta = rec_sync(sync_meta)  # type: ignore[method-assign]
    device.sync_data = rec_sync(sync_data)  # type: ignore[method-assign]


async def _workload(store: RawDiskStore, rec: Recording) -> None:
    version = 0

    async def put(key: str, size: int) -> None:
        nonlocal version
        version += 1
        assert await store.put_slice(key, payload(key, version, size), None)

    async def synced(keys: list[str]) -> None:
        await store.sync()
        for key in keys:
            got = await store.get_slice(key)
            assert got is not None
            rec.acks.append((len(rec.ops), key, int(bytes(got).split(b"|")[1])))

    for i in range(6):
        await put(f"http://o/a v {i}", 3000 + 500 * i)
    await synced([f"http://o/a v {i}" for i in range(6)])
    # Overwrites and evictions free extents; new puts may land in them (cursor at 0).
    await put("http://o/a v 0", 9000)
    await put("http://o/a v 1", 200)
    store._map.cursor = 0
    await put("http://o/b v 0", 2500)
    await put("http://o/b v 1", 7000)
    await synced(["http://o/a v 0", "http://o/a v 1", "http://o/b v 0"])
    rec.issued.append((len(rec.ops), "http://o/a v 2"))
    assert await store.delete_prefix("http://o/a v 2") == 1
    rec.acks.append((len(rec.ops), "http://o/a v 2", None))
    store._map.cursor = 0
    await put("http://o/c v 0", 3500)
    await store.checkpoint()
    await put("http://o/c v 1", 5000)
    await put("http://o/a v 3", 100)
    store._map.cursor = 0
    await put("http://o/c v 2", 12000)
    rec.issued.append((len(rec.ops), "http://o/b v 0"))
    rec.issued.append((len(rec.ops), "http://o/b v 1"))
    assert await store.delete("http://o/b") == 2
    rec.acks.append((len(rec.ops), "http://o/b v 0", None))
    rec.acks.append((len(rec.ops), "http://o/b v 1", None))
    await put("http://o/d v 0", 4000)
    await store.checkpoint()
    store._map.cursor = 0
    await put("http://o/d v 1", 6000)
    await synced(["http://o/c v 1", "http://o/d v 0", "http://o/d v 1"])


def _image(base: bytes, ops: list[tuple[int, bytes] | None], k: int, policy: str) -> bytes:
    """The device after a crash following op ``k`` under one write-back policy."""
    last_sync = max((i for i in range(k) if ops[i] is None), default=-1)
    image = bytearray(base)
    for i in range(k):
        op = ops[i]
        if op is None:
            continue
        offset, data = op
        if i > last_sync:
            is_meta = offset < DATA_OFFSET[0]
            if policy == "none" or (policy == "meta" and not is_meta):
                continue
            if policy == "data" and is_meta:
                continue
        image[offset : offset + len(data)] = data
    return bytes(image)


DATA_OFFSET = [0]


async def _check(settings: RawDiskCacheSettings, rec: Recording, k: int, where: str) -> None:
    store = await RawDiskStore.open(settings)
    try:
        check_consistent(store)
        index = store._index
        for raw_key, row in list(index.live_keys_with_rows()):
            if index.flags_of(row) & FLAG_USED:
                result = store._read_record(index.entry(row), raw_key)
                assert result is not _BAD, f"{where}: {raw_key!r} does not verify"
                assert isinstance(result, (bytes, memoryview))
                data = bytes(result)
                assert check_payload(raw_key.decode(), data), f"{where}: wrong bytes"
        expected: dict[str, int | None] = {}
        for count, key, version in rec.acks:
            if count <= k:
                expected[key] = version
        deleting = {key for count, key in rec.issued if count <= k}
        for key, version in expected.items():
            got = await store.get_slice(key)
            if got is None and key in deleting:
                continue
            if version is None:
                assert got is None, f"{where}: deleted {key} came back"
            else:
                assert got is not None, f"{where}: acknowledged {key} lost"
                assert int(bytes(got).split(b"|")[1]) >= version, f"{where}: {key} went back"
    finally:
        await store._abandon()


def test_a_crash_at_every_write_and_fsync(tmp_path: Path) -> None:
    path = str(tmp_path / "dev.bin")
    settings = RawDiskCacheSettings(
        device_path=path, total_size=SIZE, block_size=4096, sync_interval=3600
    )
    rec = Recording()

    async def run() -> bytes:
        store = await RawDiskStore.open(settings)
        DATA_OFFSET[0] = store.geometry.data_offset
        await store.sync()
        base = await asyncio.to_thread(Path(path).read_bytes)
        _record(store, rec)
        try:
            await _workload(store, rec)
        finally:
            await store._abandon()
        return base

    base = asyncio.run(run())
    ops = rec.ops
    assert sum(op is None for op in ops) >= 10 and len(ops) >= 40
    crash = str(tmp_path / "crash.bin")
    crash_settings = settings.model_copy(update={"device_path": crash})
    checked = 0
    seen: set[tuple[int, int, int]] = set()
    for k in range(len(ops) + 1):
        acked = sum(count <= k for count, _key, _version in rec.acks)
        issued = sum(count <= k for count, _key in rec.issued)
        for policy in POLICIES:
            image = _image(base, ops, k, policy)
            # The same image with the same promises made so far needs one check.
            key = (xxhash.xxh3_64_intdigest(image), acked, issued)
            if key in seen:
                continue
            seen.add(key)
            with open(crash, "wb") as f:
                f.write(image)
            asyncio.run(_check(crash_settings, rec, k, f"crash after op {k}/{len(ops)} ({policy})"))
            checked += 1
            os.unlink(crash)
    assert checked > len(ops) // 2
