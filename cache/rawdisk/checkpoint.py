"""Checkpoints: the whole index and block map, written to one of two slots in turn.

A slot is ``<4 KiB header><sections...>``. The sections are written first, fdatasync'd,
then the header (which carries every section's length and xxh3); a crash in between
leaves this slot's header naming old sections whose checksums no longer match, and the
loader falls back to the other slot. The slot with the highest valid ``seq`` wins.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import xxhash
import zstandard

from cache.rawdisk.index import NSHARDS, Index

MAGIC = b"SLCCKPT1"
HEADER_SIZE = 4096
CHUNK = 1 << 20  # copy, hash and write index memory this much at a time
SECTION_NAMES = ("rows", "key_off", "arena", "free_rows", "caps", "shard_used", "tables", "map")
_HEAD = struct.Struct("<8sIIQQQQdQQQQQQ")
_SECTION = struct.Struct("<QQ")


@dataclass(frozen=True)
class CheckpointHeader:
    format_id: int
    seq: int
    journal_epoch: int
    next_gen: int
    created: float
    counters: tuple[int, int, int, int, int]
    map_raw_len: int
    sections: tuple[tuple[int, int], ...]  # (length, xxh3) per SECTION_NAMES

    def pack(self) -> bytes:
        body = _HEAD.pack(
            MAGIC,
            1,
            len(self.sections),
            self.format_id,
            self.seq,
            self.journal_epoch,
            self.next_gen,
            self.created,
            *self.counters,
            self.map_raw_len,
        )
        for length, digest in self.sections:
            body += _SECTION.pack(length, digest)
        body += struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
        return body + bytes(HEADER_SIZE - len(body))

    @property
    def payload_bytes(self) -> int:
        return sum(length for length, _ in self.sections)


def unpack_header(raw: bytes, format_id: int) -> CheckpointHeader | None:
    if raw[:8] != MAGIC:
        return None
    (_m, version, nsections, fid, seq, epoch, next_gen, created, *rest) = _HEAD.unpack_from(raw)
    if version != 1 or nsections != len(SECTION_NAMES) or fid != format_id:
        return None
    end = _HEAD.size + nsections * _SECTION.size
    (stored,) = struct.unpack_from("<Q", raw, end)
    if xxhash.xxh3_64_intdigest(raw[:end]) != stored:
        return None
    counters = (rest[0], rest[1], rest[2], rest[3], rest[4])
    sections = tuple(
        _SECTION.unpack_from(raw, _HEAD.size + i * _SECTION.size) for i in range(nsections)
    )
    return CheckpointHeader(
        format_id=fid,
        seq=seq,
        journal_epoch=epoch,
        next_gen=next_gen,
        created=created,
        counters=counters,
        map_raw_len=rest[5],
        sections=sections,
    )


def _read_all(fd: int, length: int, offset: int) -> bytes:
    parts = []
    done = 0
    while done < length:
        chunk = os.pread(fd, min(length - done, 64 << 20), offset + done)
        if not chunk:
            raise OSError(f"short read at {offset + done}")
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _stable_chunks(parts: Sequence[bytes | bytearray | memoryview]) -> Iterator[bytes]:
    """The parts' bytes as private copies of at most CHUNK bytes (small parts coalesced)."""
    pending = bytearray()
    for part in parts:
        view = memoryview(part).cast("B")
        try:
            pos = 0
            while pos < len(view):
                take = min(CHUNK - len(pending), len(view) - pos)
                pending += view[pos : pos + take]
                pos += take
                if len(pending) >= CHUNK:
                    yield bytes(pending)
                    pending.clear()
        finally:
            view.release()
    if pending:
        yield bytes(pending)


def write_sections(
    write: Callable[[bytes | bytearray | memoryview, int], None],
    slot_offset: int,
    slot_size: int,
    index_sections: Sequence[bytes | bytearray | memoryview],
    block_map: bytes | bytearray,
) -> tuple[tuple[tuple[int, int], ...], int]:
    """Write every section into the slot (not the header). Runs in a worker thread.

    Returns the (length, xxh3) of each section and the raw map length. Raises ValueError
    when the slot is too small.
    """
    rows, key_off, arena, free_rows, caps, shard_used, *tables = index_sections
    packed_map = zstandard.ZstdCompressor(level=1).compress(block_map)
    groups: list[list[bytes | bytearray | memoryview]] = [
        [rows],
        [key_off],
        [arena],
        [free_rows],
        [caps],
        [shard_used],
        list(tables),
        [packed_map],
    ]
    total = HEADER_SIZE + sum(len(part) for group in groups for part in group)
    if total > slot_size:
        raise ValueError(f"checkpoint needs {total} bytes, slot holds {slot_size}")
    offset = slot_offset + HEADER_SIZE
    sections = []
    for group in groups:
        digest = xxhash.xxh3_64()
        length = 0
        for chunk in _stable_chunks(group):
            # Hash exactly the bytes written: a copy, taken while the GIL is held, of index
            # memory that reads on the event loop keep changing (access time, frequency).
            digest.update(chunk)
            write(chunk, offset + length)
            length += len(chunk)
        sections.append((length, digest.intdigest()))
        offset += length
    return tuple(sections), len(block_map)


@dataclass
class LoadedCheckpoint:
    header: CheckpointHeader
    index: Index
    block_map: bytes


def read_checkpoint(
    fd: int, slot_offset: int, header: CheckpointHeader, blocks: int
) -> LoadedCheckpoint | None:
    """Read and verify a slot's sections; None when any checksum fails."""
    payload = _read_all(fd, header.payload_bytes, slot_offset + HEADER_SIZE)
    parts: list[bytes] = []
    pos = 0
    for length, digest in header.sections:
        part = payload[pos : pos + length]
        if xxhash.xxh3_64_intdigest(part) != digest:
            return None
        parts.append(part)
        pos += length
    try:
        block_map = zstandard.ZstdDecompressor().decompress(
            parts[7], max_output_size=header.map_raw_len
        )
        if len(block_map) != blocks:
            return None
        index = Index.from_sections(
            rows=parts[0],
            key_off=parts[1],
            arena=parts[2],
            free_rows=parts[3],
            caps=parts[4],
            shard_used=parts[5],
            tables=parts[6],
            counters=header.counters,
        )
    except (ValueError, zstandard.ZstdError):
        return None
    if len(index.shards) != NSHARDS:
        return None
    return LoadedCheckpoint(header=header, index=index, block_map=block_map)


def sections_match(fd: int, slot_offset: int, sections: Sequence[tuple[int, int]]) -> bool:
    """Read a slot's sections back and compare them with the digests about to be committed."""
    offset = slot_offset + HEADER_SIZE
    for length, digest in sections:
        hasher = xxhash.xxh3_64()
        done = 0
        while done < length:
            chunk = os.pread(fd, min(length - done, 8 << 20), offset + done)
            if not chunk:
                return False
            hasher.update(chunk)
            done += len(chunk)
        if hasher.intdigest() != digest:
            return False
        offset += length
    return True


def read_header(fd: int, slot_offset: int, format_id: int) -> CheckpointHeader | None:
    return unpack_header(os.pread(fd, HEADER_SIZE, slot_offset), format_id)
