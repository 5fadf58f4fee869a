"""A sequential read from L2 prefetches the next slice: the engine names it to the store
(``get_slice(key, next_key=...)``), the store does not guess it from the key. Only reads
that go to the worker thread (a record not all in memory) prefetch: a resident record is
checked on the loop, and the next slice's lease is asked for right after it anyway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.origin import expected_bytes
from tests.conftest import ProxyFactory
from tests.waiting import wait_for

SLICE = 64 * 1024


def _l2(url: str) -> dict[str, Any]:
    tiers: dict[str, Any] = httpx.get(f"{url}/_slicecache/stats").json()["tiers"]
    return tiers


def test_a_read_from_l2_prefetches_the_next_slice(
    proxy: ProxyFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cache.rawdisk.residency import Residency

    monkeypatch.setattr(Residency, "resident", lambda *_: False)  # as if cold
    name = "256k-readahead.bin"  # four slices
    settings = {
        "slice_size": SLICE,
        "enable_l2_cache": True,
        "l1_cache_size_bytes": 0,  # every read of a stored slice is an L2 read
        "raw_disk_cache": {"device_path": str(tmp_path / "l2.bin"), "total_size": 16 << 20},
    }
    with proxy(**settings) as url:
        first = httpx.get(f"{url}/files/{name}", timeout=30)
        assert first.content == expected_bytes(name)
        wait_for(lambda: _l2(url)["write_behind"]["queue_depth"] == 0, "write-behind drained")
        assert _l2(url)["l2"]["prefetches_total"] == 0  # nothing was read from L2 yet
        again = httpx.get(f"{url}/files/{name}", timeout=30)
        assert again.content == expected_bytes(name)
        assert again.headers["x-cache"] == "HIT"
        # Slices 0, 1 and 2 were read from L2, each naming the next one, which is stored.
        assert _l2(url)["l2"]["prefetches_total"] == 3


def test_resident_l2_hits_are_checked_without_the_worker_thread(
    proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Just written with buffered I/O, the object's records are in the page cache: each hit
    is verified on the loop (counted), none waits on the worker thread."""
    name = "512k-resident.bin"  # eight slices
    settings = {
        "slice_size": SLICE,
        "enable_l2_cache": True,
        "l1_cache_size_bytes": 0,
        "raw_disk_cache": {
            "device_path": str(tmp_path / "l2.bin"),
            "total_size": 16 << 20,
            "use_direct_io": False,
        },
    }
    with proxy(**settings) as url:
        assert httpx.get(f"{url}/files/{name}", timeout=30).content == expected_bytes(name)
        wait_for(lambda: _l2(url)["write_behind"]["queue_depth"] == 0, "write-behind drained")
        again = httpx.get(f"{url}/files/{name}", timeout=30)
        assert again.content == expected_bytes(name)
        assert again.headers["x-cache"] == "HIT"
        l2 = _l2(url)["l2"]
        assert l2["reads_total"] == 8
        assert l2["resident_reads_total"] == 8
        assert l2["prefetches_total"] == 0


def test_l2_makes_no_compression_attempt_on_content_compressed_already(
    proxy: ProxyFactory, tmp_path: Path
) -> None:
    """With compression on, a video's slices go to L2 without a compression attempt (its
    media type says it is compressed); an octet-stream's are sampled, and these (random
    bytes) skipped."""
    settings = {
        "slice_size": SLICE,
        "enable_l2_cache": True,
        "l1_cache_size_bytes": 0,
        "raw_disk_cache": {
            "device_path": str(tmp_path / "l2.bin"),
            "total_size": 16 << 20,
            "enable_compression": True,
        },
    }
    with proxy(**settings) as url:
        video = httpx.get(f"{url}/files/512k-movie.bin?ct=video/mp4", timeout=30)
        assert video.content == expected_bytes("512k-movie.bin")
        wait_for(lambda: _l2(url)["write_behind"]["queue_depth"] == 0, "write-behind drained")
        l2 = _l2(url)["l2"]
        assert l2["writes_total"] >= 8  # its eight slices (and its metadata) are stored
        assert l2["compression_skipped_total"] == 0 and l2["compressed_writes_total"] == 0
        other = httpx.get(f"{url}/files/512k-blob.bin", timeout=30)
        assert other.content == expected_bytes("512k-blob.bin")
        wait_for(lambda: _l2(url)["write_behind"]["queue_depth"] == 0, "write-behind drained")
        assert _l2(url)["l2"]["compression_skipped_total"] >= 8  # tried, not worth it
