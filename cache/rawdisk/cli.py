"""Admin CLI: ``python -m cache.rawdisk info|verify|format PATH``.

* ``info``    geometry, usage, entry count, fragmentation, checkpoint and journal state
              (read-only; sizes in bytes and in human units).
* ``verify``  reads every record and checks its header and payload checksum (progress bar);
              exits 1 when anything is damaged. Read-only: the device is opened O_RDONLY
              and nothing is repaired. ``--repair`` opens it writable (rewriting a damaged
              superblock copy or checkpoint), drops the damaged entries, lists what it did
              and exits 0 when a read-only pass then finds the store sound.
* ``format``  creates or erases a device. An existing store is only erased with ``--force``.

The device must not be in use: the CLI takes the same exclusive lock as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from cache.rawdisk.device import Device
from cache.rawdisk.errors import RawDiskError
from cache.rawdisk.index import FLAG_USED
from cache.rawdisk.layout import (
    SUPERBLOCK_OFFSETS,
    SUPERBLOCK_SIZE,
    Superblock,
    SuperblockState,
    unpack_superblock,
)
from cache.rawdisk.store import _BAD, RawDiskStore
from settings import parse_size as parse_setting_size

T = TypeVar("T")


def parse_size(text: str) -> int:
    """The settings' size syntax (README: one syntax everywhere; ``MB`` is refused)."""
    try:
        size: int = parse_setting_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return size


def read_superblock(path: str) -> Superblock:
    try:
        # O_NONBLOCK: on a FIFO a plain read-only open waits for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise RawDiskError(f"cannot open {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise RawDiskError(f"{path} is neither a regular file nor a block device")
        os.set_blocking(fd, True)
        states = [
            unpack_superblock(os.pread(fd, SUPERBLOCK_SIZE, off)) for off in SUPERBLOCK_OFFSETS
        ]
    finally:
        os.close(fd)
    for state, sb in states:
        if state == SuperblockState.VALID and sb is not None:
            return sb
    kinds = {state for state, _ in states}
    if SuperblockState.DAMAGED in kinds:
        raise RawDiskError(f"{path}: superblock damaged (checksum mismatch in both copies)")
    raise RawDiskError(f"{path} does not hold a slicecache L2 store")


def _settings(path: str, total_size: int, block_size: int, reformat: bool = False) -> Any:
    from settings import RawDiskCacheSettings

    return RawDiskCacheSettings(
        device_path=path, total_size=total_size, block_size=block_size, reformat=reformat
    )


async def _open_existing(path: str) -> RawDiskStore:
    sb = read_superblock(path)
    return await RawDiskStore.open(_settings(path, sb.total_size, sb.block_size))


def _progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    try:
        from tqdm import tqdm
    except ImportError:  # plain counter
        done = 0
        for item in items:
            yield item
            done += 1
            if done % 1000 == 0 or done == total:
                print(f"\r{desc}: {done}/{total}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return
    yield from tqdm(items, total=total, desc=desc, unit="rec", file=sys.stderr)


def _inspect(path: str) -> RawDiskStore:
    """The device loaded read-only: O_RDONLY, shared lock, nothing written or repaired."""
    sb = read_superblock(path)
    return RawDiskStore._inspect(_settings(path, sb.total_size, sb.block_size))


def human(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


_SIZES = {
    "total_size",
    "block_size",
    "data_offset",
    "checkpoint_slot_size",
    "journal_half_size",
    "bytes",
    "stored_bytes",
    "largest_free_extent_bytes",
}


async def cmd_info(path: str, as_json: bool) -> int:
    store = await asyncio.to_thread(_inspect, path)
    try:
        await store._scan_fragmentation()
        geo = store.geometry
        stats = store.stats()
        info: dict[str, Any] = {
            "path": path,
            "format_version": store._sb.version,
            "format_generation": store._sb.generation,
            "total_size": geo.total_size,
            "block_size": geo.block_size,
            "data_offset": geo.data_offset,
            "data_blocks": geo.data_blocks,
            "max_entries": geo.max_entries,
            "checkpoint_slot_size": geo.checkpoint_slot_size,
            "journal_half_size": geo.journal_half_size,
            "entries": int(stats["entries"]),
            "bytes": int(stats["bytes"]),
            "stored_bytes": int(stats["stored_bytes"]),
            "used_blocks": int(stats["used_blocks"]),
            "usage_ratio": round(stats["usage_ratio"], 4),
            "free_extents": int(stats["free_extents"]),
            "largest_free_extent_bytes": int(stats["largest_free_extent_bytes"]),
            "fragmentation": round(stats["fragmentation"], 4),
            "compression_ratio": round(stats["compression_ratio"], 3),
            "checkpoint_seq": store._ckpt_seq,
            "journal_epoch": store._epoch,
            "replayed_records": int(stats["replayed_records"]),
            "load_seconds": round(stats["load_seconds"], 4),
            "problems": list(store._problems),
        }
    finally:
        await store._abandon()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            if key in _SIZES:
                value = f"{value} ({human(value)})"
            elif key == "problems":
                value = "; ".join(value) or "none"
            print(f"{key:<{width}}  {value}")
    return 0


async def _check_records(store: RawDiskStore) -> tuple[int, list[tuple[int, int, bytes]]]:
    """Read and verify every indexed record: (records checked, [(row, gen, key) damaged])."""
    index = store._index
    rows = [row for _key, row in index.live_keys_with_rows()]
    damaged: list[tuple[int, int, bytes]] = []
    checked = 0
    for row in _progress(rows, len(rows), "verify"):
        if not index.flags_of(row) & FLAG_USED:
            continue
        checked += 1
        entry = index.entry(row)
        key = index.key_of(row)
        try:
            result = await asyncio.to_thread(store._read_record, entry, key)
        except OSError:
            result = _BAD
        if result is _BAD:
            damaged.append((row, entry.gen, key))
    return checked, damaged


async def _verify_read_only(path: str) -> tuple[int, list[bytes], list[str]]:
    store = await asyncio.to_thread(_inspect, path)
    try:
        checked, damaged = await _check_records(store)
        return checked, [key for _row, _gen, key in damaged], list(store._problems)
    finally:
        await store._abandon()


def _report(checked: int, damaged: list[bytes], problems: list[str]) -> None:
    print(f"checked {checked} records: {checked - len(damaged)} ok, {len(damaged)} damaged")
    for name in damaged[:20]:
        print(f"  damaged: {name.decode(errors='replace')}")
    if len(damaged) > 20:
        print(f"  ... and {len(damaged) - 20} more")
    for problem in problems:
        print(f"  problem: {problem}")


def _extend_truncated(path: str) -> None:
    """A regular file cut short of its total_size: reserve it to full size again.

    The lost tail reads back as zeros, so every record that lived there fails its
    checksum and the repair below drops it; the records before the cut are kept (the
    alternative, a reformat, would erase them too).
    """
    sb = read_superblock(path)
    device = Device.open(path)  # exclusive lock: refused while a server holds it
    try:
        size = device.size()
        if device.is_block_device or size >= sb.total_size:
            return
        device.reserve(sb.total_size)
        device.sync_meta()
    finally:
        device.close()
    print(
        f"  repaired: the file held {size} bytes, less than its total_size "
        f"{sb.total_size}: extended it (records past byte {size} are lost)"
    )


async def cmd_verify(path: str, repair: bool) -> int:
    """Read-only unless ``repair``: then a writable open repairs the superblock and the
    index (reported), damaged records are dropped (listed), and a read-only pass confirms
    the result; exit 0 when the store is then sound."""
    if repair:
        _extend_truncated(path)
    checked, damaged, problems = await _verify_read_only(path)
    _report(checked, damaged, problems)
    if not damaged and not problems:
        return 0
    if not repair:
        return 1
    store = await _open_existing(path)
    dropped: list[bytes] = []
    try:
        for problem in store._problems:
            print(f"  repaired: {problem}")
        _checked, now_damaged = await _check_records(store)
        for row, gen, key in now_damaged:
            await store._drop_if_current(row, gen, None)
            dropped.append(key)
    finally:
        await store.close()
    for key in dropped:
        print(f"  dropped: {key.decode(errors='replace')}")
    print(f"repair: dropped {len(dropped)} damaged records")
    checked, damaged, problems = await _verify_read_only(path)
    _report(checked, damaged, problems)
    return 1 if damaged or problems else 0


def cmd_format(path: str, size: int | None, block_size: int, force: bool) -> int:
    if size is None:
        if not os.path.exists(path):
            raise RawDiskError("--size is required to create a new device")
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
        size -= size % block_size
    try:
        existing: Superblock | None = read_superblock(path)
    except RawDiskError:
        existing = None
    if existing is not None and not force:
        raise RawDiskError(f"{path} already holds a slicecache L2 store; add --force to erase it")
    if os.path.exists(path) and existing is None and not force:
        with open(path, "rb") as f:
            head = f.read(8192)
        if any(head):
            raise RawDiskError(f"{path} holds other data; add --force to erase it")
    return asyncio.run(_format(path, size, block_size, existing))


async def _format(path: str, size: int, block_size: int, existing: Superblock | None) -> int:
    store = await RawDiskStore.open(_settings(path, size, block_size, reformat=True))
    if existing is not None and store._sb.format_id == existing.format_id:
        # Same geometry: open() kept the store, so erase it explicitly.
        await store.clear()
    geo = store.geometry
    await store.close()
    print(
        f"formatted {path}: total_size={geo.total_size} block_size={geo.block_size} "
        f"data_blocks={geo.data_blocks} max_entries={geo.max_entries}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cache.rawdisk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="geometry, usage, entries, fragmentation")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON")
    verify = sub.add_parser("verify", help="check every record; exit 1 on damage")
    verify.add_argument("path")
    verify.add_argument("--repair", action="store_true", help="drop damaged entries")
    fmt = sub.add_parser("format", help="create or erase a device")
    fmt.add_argument("path")
    fmt.add_argument("--size", type=parse_size, help="total size (default: the file's size)")
    fmt.add_argument("--block-size", type=parse_size, default=4096)
    fmt.add_argument("--force", action="store_true", help="erase an existing store or data")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            return asyncio.run(cmd_info(args.path, args.json))
        if args.command == "verify":
            return asyncio.run(cmd_verify(args.path, args.repair))
        return cmd_format(args.path, args.size, args.block_size, args.force)
    except RawDiskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # settings validation (e.g. a bad block size)
        print(f"error: {exc}", file=sys.stderr)
        return 2
