"""Payload codec: xxh3 checksums and zstd compression only when it pays.

Runs in worker threads (zstd and xxh3 release the GIL). Compressor objects are not
thread-safe, so each worker thread keeps its own.
"""

from __future__ import annotations

import threading

import xxhash
import zstandard

from cache.rawdisk.layout import CODEC_RAW, CODEC_ZSTD

ZSTD_LEVEL = 1
MIN_COMPRESS_BYTES = 4096
SAMPLE_BYTES = 64 * 1024
MIN_RATIO = 1.1

_local = threading.local()


def checksum(data: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _compressor() -> zstandard.ZstdCompressor:
    comp = getattr(_local, "compressor", None)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        _local.compressor = comp
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = zstandard.ZstdDecompressor()
        _local.decompressor = dec
    return dec


def encode(data: bytes | memoryview, compress: bool) -> tuple[int, bytes | memoryview, bool]:
    """(codec, stored payload, tried) for ``data``.

    With ``compress``, a 64 KiB sample is compressed first so incompressible media costs
    one small attempt, then the whole payload; the result is kept only when the ratio is at
    least :data:`MIN_RATIO`. ``tried`` says whether compression was attempted.
    """
    if not compress or len(data) < MIN_COMPRESS_BYTES:
        return CODEC_RAW, data, False
    comp = _compressor()
    if len(data) > 2 * SAMPLE_BYTES:
        sample = data[:SAMPLE_BYTES]
        if len(comp.compress(sample)) * MIN_RATIO > len(sample):
            return CODEC_RAW, data, True
    packed = comp.compress(data)
    if len(packed) * MIN_RATIO > len(data):
        return CODEC_RAW, data, True
    return CODEC_ZSTD, packed, True


def decode(codec: int, payload: bytes | memoryview, orig_len: int) -> bytes | memoryview | None:
    """The original bytes, or None when the codec is unknown or the payload is corrupt."""
    if codec == CODEC_RAW:
        return payload if len(payload) == orig_len else None
    if codec == CODEC_ZSTD:
        try:
            out: bytes = _decompressor().decompress(payload, max_output_size=orig_len)
        except zstandard.ZstdError:
            return None
        return out if len(out) == orig_len else None
    return None
