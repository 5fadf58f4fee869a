"""Opening a device: check the superblocks, format, or load the newest verified checkpoint
and replay the journal after it (FORMAT.md 1, 3.2, 3.3).

Nothing here decides what a record means: replay feeds each record to
:meth:`cache.rawdisk.tables.Tables.apply`, the same rules the live store uses.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from cache.rawdisk import journal
from cache.rawdisk.checkpoint import HEADER_SIZE, read_checkpoint, read_header
from cache.rawdisk.core import Core
from cache.rawdisk.device import Device
from cache.rawdisk.errors import RawDiskError
from cache.rawdisk.layout import (
    FORMAT_VERSION,
    SUPERBLOCK_OFFSETS,
    SUPERBLOCK_SIZE,
    Geometry,
    Superblock,
    SuperblockState,
    compute_geometry,
    new_superblock,
    unpack_superblock,
)
from cache.rawdisk.persistence import CHECKPOINT_RECORDS, Persistence

if TYPE_CHECKING:
    from settings import RawDiskCacheSettings

log = logging.getLogger("slicecache.rawdisk")


def examine(
    settings: RawDiskCacheSettings, device: Device, index_capacity: int | None
) -> tuple[Geometry, Superblock, bool, bool, int]:
    """Read-only look at the superblocks: (wanted geometry, superblock to use, must
    format, one copy needs a rewrite, generation). Raises :class:`RawDiskError` when the
    device must not be used as configured."""
    path = settings.device_path
    wanted = compute_geometry(settings.total_size, settings.block_size, index_capacity)
    size = device.size()
    states: list[tuple[str, Superblock | None]] = []
    for offset in SUPERBLOCK_OFFSETS:
        raw = device.pread(SUPERBLOCK_SIZE, offset) if size >= offset + SUPERBLOCK_SIZE else b""
        states.append(unpack_superblock(raw))
    sb = new_superblock(wanted, 0, 0)  # placeholder when formatting
    valid = [sb for state, sb in states if state == SuperblockState.VALID and sb]
    kinds = {state for state, _ in states}
    reformat = settings.reformat
    repair = False
    generation = 0
    if valid:
        sb = valid[0]
        generation = sb.generation
        repair = states[0][0] != SuperblockState.VALID or states[1][0] != SuperblockState.VALID
        problem = ""
        if sb.version != FORMAT_VERSION:
            newer = "newer" if sb.version > FORMAT_VERSION else "older"
            problem = (
                f"it was formatted with format version {sb.version}, {newer} than the "
                f"version {FORMAT_VERSION} this build reads"
            )
        elif sb.total_size != settings.total_size or sb.block_size != settings.block_size:
            problem = (
                f"its geometry is total_size={sb.total_size} block_size={sb.block_size}, "
                f"but the settings say total_size={settings.total_size} "
                f"block_size={settings.block_size}"
            )
        elif size < sb.total_size:
            problem = f"the file holds {size} bytes, less than its total_size {sb.total_size}"
        if problem and not reformat:
            raise RawDiskError(
                f"refusing to use L2 device {path}: {problem}. Set "
                "SLICECACHE_RAW_DISK_CACHE__REFORMAT=true to erase and reformat it."
            )
        must_format = bool(problem)
    elif kinds == {SuperblockState.EMPTY}:
        must_format = True
    else:
        what = (
            "its superblock is damaged (checksum mismatch in both copies)"
            if SuperblockState.DAMAGED in kinds
            else "it does not hold a slicecache L2 store (unknown superblock)"
        )
        if not reformat:
            raise RawDiskError(
                f"refusing to use L2 device {path}: {what}. Set "
                "SLICECACHE_RAW_DISK_CACHE__REFORMAT=true to erase and reformat it."
            )
        must_format = True

    return wanted, sb, must_format, repair, generation


def attach(
    settings: RawDiskCacheSettings,
    device: Device,
    index_capacity: int | None,
    read_only: bool = False,
) -> tuple[Core, Persistence]:
    """Format or load ``device``: the shared core and the persistence of an open store."""
    path = settings.device_path
    wanted, sb, must_format, repair, generation = examine(settings, device, index_capacity)
    if must_format and read_only:
        raise RawDiskError(f"{path} does not hold a usable slicecache L2 store")
    if must_format:
        device.reserve(wanted.total_size)
        sb = new_superblock(wanted, int.from_bytes(os.urandom(8), "little"), generation + 1)
        core = Core(settings, device, sb)
        persist = Persistence(core)
        _format(core, persist)
        log.info("formatted L2 device %s: %s", path, wanted)
    elif read_only:
        core = Core(settings, device, sb)
        persist = Persistence(core)
        if repair:
            core.problems.append("one superblock copy is damaged")
        _load(core, persist, read_only=True)
        return core, persist
    else:
        device.reserve(sb.total_size)
        core = Core(settings, device, sb)
        persist = Persistence(core)
        if repair:
            core.problems.append("one superblock copy was damaged: rewrote it")
            packed = sb.pack()
            for offset in SUPERBLOCK_OFFSETS:
                device.pwrite(packed, offset)
            device.sync_meta()
            core.stats["superblock_repairs"] = 1.0
            done = "left as it is (read-only)" if device.read_only else "was rewritten"
            log.warning("L2 device %s: one superblock copy was damaged and %s", path, done)
        _load(core, persist)
    if settings.use_direct_io:
        device.enable_direct_io(sb.block_size, sb.geometry.data_offset)
        if not device.direct_io:
            log.warning(
                "use_direct_io=true but L2 device %s uses buffered I/O: %s",
                path,
                device.direct_io_reason,
            )
    return core, persist


def _format(core: Core, persist: Persistence) -> None:
    geo = core.geo
    dev = core.device
    for epoch in (0, 1):
        dev.pwrite(bytes(4096), geo.journal_half(epoch))
    dev.pwrite(bytes(HEADER_SIZE), geo.checkpoint_slot(1))
    persist.ckpt_seq = 0
    persist.epoch = 1
    persist.write_checkpoint_sync(journal_epoch=1)
    packed = core.sb.pack()
    for offset in SUPERBLOCK_OFFSETS:
        dev.pwrite(packed, offset)
    dev.sync_meta()


def _load(core: Core, persist: Persistence, read_only: bool = False) -> None:
    geo = core.geo
    dev = core.device
    problems = core.problems
    headers = []
    max_epoch = 0
    max_seq = 0
    for slot in (0, 1):
        header = read_header(dev.fd, geo.checkpoint_slot(slot), core.format_id)
        if header is not None:
            headers.append((header, slot))
            max_epoch = max(max_epoch, header.journal_epoch)
            max_seq = max(max_seq, header.seq)
    headers.sort(key=lambda item: item[0].seq, reverse=True)
    loaded = None
    unusual = False
    for position, (header, slot) in enumerate(headers):
        loaded = read_checkpoint(dev.fd, geo.checkpoint_slot(slot), header, geo.data_blocks)
        if loaded is not None:
            unusual = position > 0
            persist.good_slot = slot
            break
        if not read_only:
            log.error("L2 device %s: checkpoint seq %d is damaged", dev.path, header.seq)
        if position == 0:
            problems.append(
                f"the newest checkpoint (seq {header.seq}) is damaged"
                + ("" if read_only else ": rewrote it")
            )
    for half in (0, 1):
        first = journal.first_epoch(dev.pread(4096, geo.journal_half(half)), core.format_id)
        if first is not None:
            max_epoch = max(max_epoch, first)
    if loaded is None:
        problems.append(
            "no valid checkpoint: the index is empty, cached data unreachable"
            + ("" if read_only else " (rewrote an empty checkpoint)")
        )
        if read_only:
            core.stats["index_recoveries"] = 1.0
            persist.ckpt_seq = max_seq
            persist.epoch = max_epoch + 1
            return
        log.error(
            "L2 device %s: no valid checkpoint; starting with an empty index "
            "(cached data is dropped, never served unverified)",
            dev.path,
        )
        core.stats["index_recoveries"] = 1.0
        persist.ckpt_seq = max_seq
        persist.write_checkpoint_sync(journal_epoch=max_epoch + 1)
        persist.epoch = max_epoch + 1
        return
    header = loaded.header
    core.tables.load(loaded.index, loaded.block_map, header.next_gen)
    persist.ckpt_seq = max_seq  # past a damaged newer header too: seqs only grow
    core.tables.reclaim_all_dead()
    replayed, damaged = _replay(core, persist, header.journal_epoch)
    core.stats["replayed_records"] = float(replayed)
    if read_only:
        return
    if unusual or damaged or replayed > CHECKPOINT_RECORDS // 2:
        # Start a fresh epoch past anything on disk, so no stale journal half can ever
        # be replayed after this one. A damaged journal too: otherwise, with nothing
        # new to journal, the damaged record stays where every later open finds it
        # (and `verify --repair` could never end clean).
        persist.ckpt_seq = max(persist.ckpt_seq, max_seq)
        persist.epoch = max(max_epoch, persist.epoch) + 1
        persist.journal_pos = 0
        persist.journal_seq = 0
        persist.write_checkpoint_sync(journal_epoch=persist.epoch)
        persist.records_since_ckpt = 0


def _replay(core: Core, persist: Persistence, epoch: int) -> tuple[int, bool]:
    """Apply the journal from ``epoch`` on: (records applied, stopped at a damaged one)."""
    count = 0
    damaged_seen = False
    persist.epoch = epoch
    persist.journal_pos = 0
    persist.journal_seq = 0
    for current in (epoch, epoch + 1):
        end, last_seq, damaged = _replay_half(core, current)
        if last_seq < 0 and current != epoch:
            break
        count += last_seq + 1
        persist.epoch = current
        persist.journal_pos = end
        persist.journal_seq = last_seq + 1
        if damaged:
            damaged_seen = True
            # A damaged record of this epoch (not a clean end): records after it are
            # lost, so the next epoch must not be replayed on top of the gap.
            log.error("L2 journal epoch %d is damaged at offset %d", current, end)
            core.problems.append(
                f"journal epoch {current} is damaged at offset {end}: records after it lost"
            )
            break
    persist.records_since_ckpt = count
    return count, damaged_seen


def _replay_half(core: Core, epoch: int) -> tuple[int, int, bool]:
    """Apply one epoch's records; (end offset, last seq or -1, damaged record found)."""
    geo = core.geo
    device = core.device
    base = geo.journal_half(epoch)
    pos = 0
    seq = 0
    window = 8 << 20
    while True:
        length = min(window, geo.journal_half_size - pos)
        if length <= 0:
            return pos, seq - 1, False
        data = device.pread(length, base + pos)
        consumed = 0
        for end, _epoch, rec_seq, record in journal.scan(data, core.format_id, epoch, seq):
            core.tables.apply(record)
            consumed = end
            seq = rec_seq + 1
        pos += consumed
        if consumed + journal.MAX_RECORD < len(data) or len(data) < length or not consumed:
            break
    tail = device.pread(journal.HEADER.size, base + pos)
    damaged = False
    if len(tail) == journal.HEADER.size:
        _len, _kind, tail_epoch, tail_seq = journal.HEADER.unpack(tail)
        damaged = tail_epoch == epoch and tail_seq == seq
    return pos, seq - 1, damaged
