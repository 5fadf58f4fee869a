"""Admin CLI: ``python -m cache.rawdisk info|verify|format PATH``.

* ``info``    geometry, usage, entry count, fragmentation, checkpoint and journal state.
* ``verify``  reads every record and checks its header and payload checksum (progress bar);
              exits 1 when anything is damaged, writing nothing. ``--repair`` drops the
              damaged entries, lists each, and exits 0 (the store is then sound).
* ``format``  creates or erases a device. An existing store is only erased with ``--force``.

The device must not be in use: the CLI takes the same exclusive lock as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

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

T = TypeVar("T")


def parse_size(text: str) -> int:
    """The settings' size syntax (README: one syntax everywhere; ``MB`` is refused)."""
    from settings import parse_size as parse_setting_size

    try:
        size: int = parse_setting_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return size


def human_size(size: int) -> str:
    """``16777216`` -> ``16.0 MiB``: what an operator compares with the settings."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{value:.1f} TiB"


# Fields of ``info`` that are byte counts: printed with a human size beside them.
_BYTE_FIELDS = {
    "total_size",
    "block_size",
    "data_offset",
    "checkpoint_slot_size",
    "journal_half_size",
    "bytes",
    "stored_bytes",
    "largest_free_extent_bytes",
}


def read_superblock(path: str) -> Superblock:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RawDiskError(f"cannot open {path}: {exc.strerror}") from None
    try:
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


async def _open_existing(path: str, read_only: bool = True) -> RawDiskStore:
    sb = read_superblock(path)
    settings = _settings(path, sb.total_size, sb.block_size)
    return await RawDiskStore.open(settings, read_only=read_only)


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


async def cmd_info(path: str, as_json: bool) -> int:
    store = await _open_existing(path)
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
        }
    finally:
        await store._abandon()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            shown = f"{value} ({human_size(value)})" if key in _BYTE_FIELDS else value
            print(f"{key:<{width}}  {shown}")
    return 0


async def cmd_verify(path: str, repair: bool) -> int:
    store = await _open_existing(path, read_only=not repair)
    damaged: list[str] = []
    problems: list[str] = []
    try:
        stats = store.stats()
        if stats["index_recoveries"]:
            problems.append("no valid checkpoint was found (index started empty)")
        if stats["superblock_repairs"]:
            fixed = "rewritten from the other" if repair else "--repair rewrites it"
            problems.append(f"one superblock copy was damaged ({fixed})")
        index = store._index
        rows = [row for _key, row in index.live_keys_with_rows()]
        for row in _progress(rows, len(rows), "verify"):
            if not index.flags_of(row) & FLAG_USED:
                continue
            entry = index.entry(row)
            key = index.key_of(row)
            try:
                result = await asyncio.to_thread(store._read_record, entry, key)
            except OSError:
                result = _BAD
            if result is _BAD:
                damaged.append(key.decode(errors="replace"))
                if repair:
                    await store._drop_if_current(row, entry.gen, None)
        print(f"checked {len(rows)} records: {len(rows) - len(damaged)} ok, {len(damaged)} damaged")
        label = "dropped" if repair else "damaged"
        for name in damaged if repair else damaged[:20]:
            print(f"  {label}: {name}")
        if repair and damaged:
            print(f"dropped {len(damaged)} damaged records")
        for problem in problems:
            print(f"  problem: {problem}")
    finally:
        if repair:
            await store.close()
        else:
            await store._abandon()
    if repair:
        # Damaged entries are dropped and close() writes a fresh checkpoint (and the
        # superblock was rewritten at open): the store is sound now.
        return 0
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
