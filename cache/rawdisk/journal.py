"""Journal records: the changes made to the index since the last checkpoint.

Each record is ``<len u32><type u8><3 pad><epoch u64><seq u64><body><xxh3 u64>``; the
checksum is seeded with the device's format id, so a record left over from an earlier
format of the same device never validates. The journal has two halves; epoch ``e`` is
written into half ``e % 2``. Replay reads a half from its start and stops at the first
record that is torn, damaged, from another epoch or out of sequence.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

HEADER = struct.Struct("<IB3xQQ")
TRAILER = 8
PUT = 1
DELETE = 2
PURGE = 3
CLEAR = 4

# row, gen, checksum, start, nblocks, stored_len, orig_len, expires, created, codec, kind, key_len
_PUT = struct.Struct("<IQQQIIIIIBBH")
_DELETE = struct.Struct("<IQ")
_PURGE = struct.Struct("<H")
MAX_RECORD = HEADER.size + _PUT.size + 4096 + TRAILER


def put_record_size(key_len: int) -> int:
    """Bytes the journal record of a put of a ``key_len``-byte key takes."""
    return HEADER.size + _PUT.size + key_len + TRAILER


@dataclass(frozen=True, slots=True)
class PutRecord:
    row: int
    gen: int
    checksum: int
    start: int
    nblocks: int
    stored_len: int
    orig_len: int
    expires: int
    created: int
    codec: int
    kind: int
    key: bytes


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    row: int
    gen: int


@dataclass(frozen=True, slots=True)
class PurgeRecord:
    prefix: bytes


@dataclass(frozen=True, slots=True)
class ClearRecord:
    pass


Record = PutRecord | DeleteRecord | PurgeRecord | ClearRecord


def encode(record: Record, epoch: int, seq: int, seed: int) -> bytes:
    if isinstance(record, PutRecord):
        kind = PUT
        body = (
            _PUT.pack(
                record.row,
                record.gen,
                record.checksum,
                record.start,
                record.nblocks,
                record.stored_len,
                record.orig_len,
                record.expires,
                record.created,
                record.codec,
                record.kind,
                len(record.key),
            )
            + record.key
        )
    elif isinstance(record, DeleteRecord):
        kind = DELETE
        body = _DELETE.pack(record.row, record.gen)
    elif isinstance(record, PurgeRecord):
        kind = PURGE
        body = _PURGE.pack(len(record.prefix)) + record.prefix
    else:
        kind = CLEAR
        body = b""
    head = HEADER.pack(HEADER.size + len(body) + TRAILER, kind, epoch, seq)
    raw = head + body
    return raw + struct.pack("<Q", xxhash.xxh3_64_intdigest(raw, seed))


def _decode_body(kind: int, body: bytes) -> Record | None:
    if kind == PUT:
        if len(body) < _PUT.size:
            return None
        (row, gen, checksum, start, nblocks, stored, orig, expires, created, codec, kind, klen) = (
            _PUT.unpack_from(body)
        )
        key = body[_PUT.size :]
        if len(key) != klen:
            return None
        return PutRecord(
            row=row,
            gen=gen,
            checksum=checksum,
            start=start,
            nblocks=nblocks,
            stored_len=stored,
            orig_len=orig,
            expires=expires,
            created=created,
            codec=codec,
            kind=kind,
            key=key,
        )
    if kind == DELETE:
        if len(body) != _DELETE.size:
            return None
        return DeleteRecord(*_DELETE.unpack(body))
    if kind == PURGE:
        if len(body) < _PURGE.size:
            return None
        (length,) = _PURGE.unpack_from(body)
        prefix = body[_PURGE.size :]
        return PurgeRecord(prefix) if len(prefix) == length else None
    if kind == CLEAR:
        return ClearRecord() if not body else None
    return None


def first_epoch(data: bytes, seed: int) -> int | None:
    """The epoch of the first record of a journal half, if that record is valid."""
    for _offset, epoch, _seq, _record in scan(data, seed, None, None):
        return epoch
    return None


def scan(
    data: bytes | memoryview, seed: int, epoch: int | None, first_seq: int | None
) -> Iterator[tuple[int, int, int, Record]]:
    """(end offset, epoch, seq, record) of the valid records at the start of ``data``.

    Stops at the first record that is torn or damaged, or (when given) from another epoch
    or not following ``first_seq`` in sequence.
    """
    pos = 0
    expected_seq = first_seq
    view = memoryview(data)
    while pos + HEADER.size + TRAILER <= len(view):
        length, kind, rec_epoch, seq = HEADER.unpack_from(view, pos)
        if length < HEADER.size + TRAILER or pos + length > len(view):
            return
        raw = bytes(view[pos : pos + length - TRAILER])
        (stored,) = struct.unpack_from("<Q", view, pos + length - TRAILER)
        if xxhash.xxh3_64_intdigest(raw, seed) != stored:
            return
        if epoch is not None and rec_epoch != epoch:
            return
        if expected_seq is not None and seq != expected_seq:
            return
        record = _decode_body(kind, raw[HEADER.size :])
        if record is None:
            return
        pos += length
        expected_seq = seq + 1
        yield pos, rec_epoch, seq, record
