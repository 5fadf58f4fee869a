"""Shared helpers for the L2 (raw disk) tests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cache.rawdisk import RawDiskStore
from cache.rawdisk.allocator import FREE, HELD, USED
from cache.rawdisk.core import COUNTERS
from cache.rawdisk.index import FLAG_USED
from settings import RawDiskCacheSettings

MiB = 1024 * 1024


def payload(key: str, version: int, size: int) -> bytes:
    """Deterministic bytes for (key, version), self-describing: the reader can check them."""
    head = f"{key}|{version}|".encode()
    seed = hashlib.blake2b(head).digest()
    body = (seed * (size // len(seed) + 1))[: max(0, size - len(head))]
    return (head + body)[:size] if size >= len(head) else head


def check_payload(key: str, data: bytes) -> bool:
    head, _, _ = bytes(data).partition(b"|")
    if head.decode(errors="replace") != key:
        return False
    version = int(bytes(data).split(b"|")[1])
    return bytes(data) == payload(key, version, len(data))


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., RawDiskCacheSettings]:
    def make(**overrides: Any) -> RawDiskCacheSettings:
        values: dict[str, Any] = {
            "device_path": str(tmp_path / "l2.bin"),
            "total_size": 16 * MiB,
            "block_size": 4096,
            "sync_interval": 0.05,
        }
        values.update(overrides)
        return RawDiskCacheSettings(**values)

    return make


def check_consistent(store: RawDiskStore) -> None:
    """The block map marks exactly the extents of the index's rows, without overlap."""
    index = store._index
    block_map = store._map
    expected = bytearray(block_map.blocks)
    for row in range(index.nrows):
        if index.flags_of(row) & FLAG_USED:
            start, nblocks = index.extent_of(row)
            assert start + nblocks <= block_map.blocks
            assert expected[start : start + nblocks] == bytes(nblocks), f"row {row} overlaps"
            expected[start : start + nblocks] = bytes([USED]) * nblocks
    actual = bytes(block_map.map)
    tables = store._core.tables
    # Freed extents wait in unsynced_frees, or in syncing_frees while a sync runs.
    pending = [*tables.unsynced_frees, *tables.syncing_frees]
    held = [*tables.held_by_readers.items(), *pending]
    for start, nblocks in held:
        assert actual[start : start + nblocks] == bytes([HELD]) * nblocks
        assert expected[start : start + nblocks] == bytes(nblocks), f"{start} held and used"
        expected[start : start + nblocks] = bytes([HELD]) * nblocks
    assert tables.pending_free_blocks == sum(n for _s, n in pending)
    assert actual == bytes(expected)
    assert block_map.free_blocks == actual.count(FREE)
    # Every visible key is found through the table at its own row.
    for key, row in index.live_keys_with_rows():
        assert index.find(key, index.hash_of(row)) == row


def write_at(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def flip_byte(path: str, offset: int) -> None:
    write_at(path, offset, bytes([read_at(path, offset, 1)[0] ^ 0xFF]))


def fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    return 0


def write_new(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def exists(path: str) -> bool:
    return os.path.exists(path)


# What an L2 read may move: every counter but those of the work that runs on its own
# clocks (journal syncs, checkpoints).
READ_COUNTERS = tuple(n for n in COUNTERS if not n.startswith(("journal_", "checkpoint")))


def read_counts(stats: dict[str, float]) -> dict[str, float]:
    """The read counters of an L2's stats."""
    return {name: stats[name] for name in READ_COUNTERS}
