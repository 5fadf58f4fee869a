"""On-disk format of the L2 device: geometry, superblock, record header (see FORMAT.md).

Pure functions and small frozen dataclasses only; no I/O happens here, so every byte
layout can be unit-tested directly. All integers are little-endian.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import xxhash

from cache.rawdisk.errors import RawDiskError

FORMAT_VERSION = 1
SUPERBLOCK_MAGIC = b"SLCCL2SB"
SUPERBLOCK_SIZE = 4096
# Superblock copies: primary at 0, backup at 4096. Both are written at format time only.
SUPERBLOCK_OFFSETS = (0, SUPERBLOCK_SIZE)
# Every region starts on this boundary, so O_DIRECT can address it and every extent.
REGION_ALIGN = 4096

RECORD_MAGIC = b"SLCR"
RECORD_HEADER_SIZE = 64
CODEC_RAW = 0
CODEC_ZSTD = 1
KIND_SLICE = 0
KIND_META = 1

# Index budget: one entry per INDEX_BYTES_PER_ENTRY_SPACE bytes of device on average, and
# INDEX_SLOT_BYTES_PER_ENTRY bytes of checkpoint space reserved per entry: ~100 B of row,
# key offset, hash table and free list, plus the key and its 10 bytes of framing in the
# arena, for slice keys (URL, version, index) of up to ~140 bytes on average. Freed key
# bytes are compacted away before they can crowd the slot; longer keys make the store
# evict before max_entries.
INDEX_BYTES_PER_ENTRY_SPACE = 32 * 1024
INDEX_SLOT_BYTES_PER_ENTRY = 256
MIN_INDEX_ENTRIES = 1024

MiB = 1024 * 1024


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclass(frozen=True)
class Geometry:
    """Where every region of the device lives. Derived from (total_size, block_size)."""

    total_size: int
    block_size: int
    max_entries: int
    checkpoint_offset: int
    checkpoint_slot_size: int
    journal_offset: int
    journal_half_size: int
    data_offset: int
    data_blocks: int

    def checkpoint_slot(self, index: int) -> int:
        return self.checkpoint_offset + index * self.checkpoint_slot_size

    def journal_half(self, epoch: int) -> int:
        return self.journal_offset + (epoch % 2) * self.journal_half_size

    def block_offset(self, block: int) -> int:
        return self.data_offset + block * self.block_size


def validate_block_size(block_size: int) -> None:
    if block_size < 512 or block_size > MiB or block_size & (block_size - 1):
        raise RawDiskError(
            f"block_size {block_size} is invalid: it must be a power of two from 512 to 1048576"
        )


def compute_geometry(total_size: int, block_size: int, max_entries: int | None = None) -> Geometry:
    """Lay the regions out for a device of ``total_size`` bytes. Raises when it cannot fit."""
    validate_block_size(block_size)
    align = max(block_size, REGION_ALIGN)
    if max_entries is None:
        max_entries = max(MIN_INDEX_ENTRIES, total_size // INDEX_BYTES_PER_ENTRY_SPACE)
    blocks_estimate = total_size // block_size
    # A checkpoint holds the index (bounded by max_entries) and the block map (1 B/block).
    slot = _align_up(
        4096 + max_entries * INDEX_SLOT_BYTES_PER_ENTRY + blocks_estimate + 64 * 1024, align
    )
    half = _align_up(min(256 * MiB, max(MiB, total_size // 512)), align)
    checkpoint_offset = _align_up(2 * SUPERBLOCK_SIZE, align)
    journal_offset = checkpoint_offset + 2 * slot
    data_offset = _align_up(journal_offset + 2 * half, align)
    if data_offset >= total_size:
        raise RawDiskError(
            f"total_size {total_size} is too small: the superblock, index and journal alone "
            f"need {data_offset} bytes"
        )
    data_blocks = (total_size - data_offset) // block_size
    if data_blocks < 16:
        raise RawDiskError(
            f"total_size {total_size} leaves only {data_blocks} data blocks of {block_size} bytes"
        )
    return Geometry(
        total_size=total_size,
        block_size=block_size,
        max_entries=max_entries,
        checkpoint_offset=checkpoint_offset,
        checkpoint_slot_size=slot,
        journal_offset=journal_offset,
        journal_half_size=half,
        data_offset=data_offset,
        data_blocks=data_blocks,
    )


# --- superblock --------------------------------------------------------------------------

_SUPERBLOCK = struct.Struct("<8sIIIIQQQdQQQQQQQQ")


@dataclass(frozen=True)
class Superblock:
    version: int
    block_size: int
    total_size: int
    format_id: int
    generation: int
    created: float
    geometry: Geometry

    def pack(self) -> bytes:
        g = self.geometry
        body = _SUPERBLOCK.pack(
            SUPERBLOCK_MAGIC,
            self.version,
            0,
            self.block_size,
            0,
            self.total_size,
            self.format_id,
            self.generation,
            self.created,
            g.max_entries,
            g.checkpoint_offset,
            g.checkpoint_slot_size,
            g.journal_offset,
            g.journal_half_size,
            g.data_offset,
            g.data_blocks,
            0,
        )
        body += struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
        return body + bytes(SUPERBLOCK_SIZE - len(body))


class SuperblockState:
    """What reading one superblock copy found."""

    EMPTY = "empty"  # all zero: a new device
    FOREIGN = "foreign"  # not our magic: someone else's data
    DAMAGED = "damaged"  # our magic, bad checksum
    VALID = "valid"


def unpack_superblock(raw: bytes) -> tuple[str, Superblock | None]:
    if len(raw) < _SUPERBLOCK.size + 8:
        return SuperblockState.EMPTY, None
    if raw[:8] != SUPERBLOCK_MAGIC:
        if not any(raw[: _SUPERBLOCK.size + 8]):
            return SuperblockState.EMPTY, None
        return SuperblockState.FOREIGN, None
    body = raw[: _SUPERBLOCK.size]
    (stored,) = struct.unpack_from("<Q", raw, _SUPERBLOCK.size)
    if xxhash.xxh3_64_intdigest(body) != stored:
        return SuperblockState.DAMAGED, None
    fields = _SUPERBLOCK.unpack(body)
    (
        _magic,
        version,
        _flags,
        block_size,
        _pad,
        total_size,
        format_id,
        generation,
        created,
        max_entries,
        ckpt_off,
        ckpt_size,
        journal_off,
        journal_half,
        data_off,
        data_blocks,
        _reserved,
    ) = fields
    geometry = Geometry(
        total_size=total_size,
        block_size=block_size,
        max_entries=max_entries,
        checkpoint_offset=ckpt_off,
        checkpoint_slot_size=ckpt_size,
        journal_offset=journal_off,
        journal_half_size=journal_half,
        data_offset=data_off,
        data_blocks=data_blocks,
    )
    return SuperblockState.VALID, Superblock(
        version=version,
        block_size=block_size,
        total_size=total_size,
        format_id=format_id,
        generation=generation,
        created=created,
        geometry=geometry,
    )


def new_superblock(geometry: Geometry, format_id: int, generation: int) -> Superblock:
    return Superblock(
        version=FORMAT_VERSION,
        block_size=geometry.block_size,
        total_size=geometry.total_size,
        format_id=format_id,
        generation=generation,
        created=time.time(),
        geometry=geometry,
    )


# --- record header (first 64 bytes of every extent) --------------------------------------

# magic, version, codec, kind, pad, key_len, key_hash, gen, format_id, stored_len,
# orig_len, payload_xxh3, created, pad -> then header_xxh3 over the 56 bytes before it.
_RECORD = struct.Struct("<4sBBBBHxxQQQIIQI")
assert _RECORD.size == 56


@dataclass(frozen=True)
class RecordHeader:
    codec: int
    kind: int
    key_len: int
    key_hash: int
    gen: int
    format_id: int
    stored_len: int
    orig_len: int
    payload_checksum: int
    created: int

    def pack(self) -> bytes:
        body = _RECORD.pack(
            RECORD_MAGIC,
            FORMAT_VERSION,
            self.codec,
            self.kind,
            0,
            self.key_len,
            self.key_hash,
            self.gen,
            self.format_id,
            self.stored_len,
            self.orig_len,
            self.payload_checksum,
            self.created,
        )
        return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


def unpack_record_header(raw: bytes | bytearray | memoryview) -> RecordHeader | None:
    """The header at the start of ``raw``, or None when torn, foreign or damaged."""
    if len(raw) < RECORD_HEADER_SIZE or bytes(raw[:4]) != RECORD_MAGIC:
        return None
    body = bytes(raw[: _RECORD.size])
    (stored,) = struct.unpack_from("<Q", raw, _RECORD.size)
    if xxhash.xxh3_64_intdigest(body) != stored:
        return None
    (
        _magic,
        version,
        codec,
        kind,
        _pad,
        key_len,
        key_hash,
        gen,
        format_id,
        stored_len,
        orig_len,
        checksum,
        created,
    ) = _RECORD.unpack(body)
    if version != FORMAT_VERSION:
        return None
    return RecordHeader(
        codec=codec,
        kind=kind,
        key_len=key_len,
        key_hash=key_hash,
        gen=gen,
        format_id=format_id,
        stored_len=stored_len,
        orig_len=orig_len,
        payload_checksum=checksum,
        created=created,
    )


def extent_blocks(key_len: int, stored_len: int, block_size: int) -> int:
    """Blocks an extent needs: header, key, payload."""
    return (RECORD_HEADER_SIZE + key_len + stored_len + block_size - 1) // block_size


def key_hash(key: bytes) -> int:
    return xxhash.xxh3_64_intdigest(key)
