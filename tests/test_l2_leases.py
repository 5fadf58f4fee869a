"""L2 hits are written from leased extents (zero-copy); every response releases its lease,
however it ends: completed, cut by the client mid-stream, or stalled behind a full socket
(cache.protocol.SliceLease, app.engine.sliced._send_borrowed, app.edge.writtenout)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import httpx

from bench.origin import expected_bytes
from tests.conftest import ProxyFactory
from tests.waiting import wait_for

SLICE = 256 * 1024
NAME = "8m-leases.bin"  # 32 slices


def _tiers(url: str) -> dict[str, Any]:
    tiers: dict[str, Any] = httpx.get(f"{url}/_slicecache/stats", timeout=30).json()["tiers"]
    return tiers


def _leases(url: str) -> float:
    return float(_tiers(url)["l2"]["leases"])


def _cut_short(host: str, port: int, path: str, keep: int) -> None:
    """GET, read ``keep`` bytes through a small receive window (so that the proxy's writes
    back up into its transport), then hang up."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        got = 0
        while got < keep:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += len(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_l2_hits_release_their_leases_through_disconnects(
    proxy: ProxyFactory, tmp_path: Path
) -> None:
    settings = {
        "slice_size": SLICE,
        "enable_l2_cache": True,
        "l1_cache_size_bytes": 0,  # every read of a stored slice is an L2 read
        "raw_disk_cache": {"device_path": str(tmp_path / "l2.bin"), "total_size": 32 << 20},
    }
    want = expected_bytes(NAME)
    with proxy(**settings) as url:
        first = httpx.get(f"{url}/files/{NAME}", timeout=30)
        assert first.content == want
        wait_for(lambda: _tiers(url)["write_behind"]["queue_depth"] == 0, "write-behind drained")
        host, port = url.removeprefix("http://").split(":")
        hits_before = _tiers(url)["l2"]["hits_total"]
        # Hundreds of L2 hits, most cut short at various points, 16 at a time.
        for batch in range(20):
            threads = [
                threading.Thread(
                    target=_cut_short,
                    args=(host, int(port), f"/files/{NAME}", (batch * 16 + i) * 104729 % (8 << 20)),
                )
                for i in range(16)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            # Whole reads in between: the bytes are right while extents are being recycled.
            whole = httpx.get(f"{url}/files/{NAME}", timeout=30)
            assert whole.content == want
            assert whole.headers["x-cache"] == "HIT"
        ranged = httpx.get(
            f"{url}/files/{NAME}", headers={"range": "bytes=300000-1000000"}, timeout=30
        )
        assert ranged.content == want[300000:1000001]
        assert _tiers(url)["l2"]["hits_total"] - hits_before >= 20 * 32  # served from L2
        wait_for(lambda: _leases(url) == 0, "every lease released")
        metrics = httpx.get(f"{url}/_slicecache/metrics", timeout=30).text
        assert "slicecache_l2_leases 0.0" in metrics


def test_a_slow_reader_gets_the_old_bytes_while_its_object_is_purged_and_l2_churned(
    proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A client stalls mid-way through an L2 hit (the proxy's transport holds leased bytes);
    the object is purged and the 32 MiB L2 is filled over with other objects, so freed
    blocks are reused. Every byte the slow client then reads is the purged object's own:
    its extents were not recycled under it."""
    settings = {
        "slice_size": SLICE,
        "enable_l2_cache": True,
        "l1_cache_size_bytes": 0,
        "raw_disk_cache": {"device_path": str(tmp_path / "l2.bin"), "total_size": 32 << 20},
        "purge": {"enabled": True, "auth_token": "t"},
    }
    name = "16m-slow-lease.bin"  # more than the kernel's socket buffers take at once
    want = expected_bytes(name)
    with proxy(**settings) as url:
        assert httpx.get(f"{url}/files/{name}", timeout=30).content == want
        wait_for(lambda: _tiers(url)["write_behind"]["queue_depth"] == 0, "write-behind drained")
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(60)
            sock.connect((host, int(port)))
            sock.sendall(f"GET /files/{name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            received = sock.recv(64 * 1024)
            wait_for(lambda: _leases(url) >= 1, "the stalled response holds a lease")
            purge = httpx.request(
                "PURGE", f"{url}/files/{name}", headers={"authorization": "Bearer t"}, timeout=30
            )
            assert purge.status_code == 200
            for i in range(12):  # 48 MiB of other objects through a 32 MiB L2
                other = f"4m-churn-{i}.bin"
                assert httpx.get(f"{url}/files/{other}", timeout=30).content == expected_bytes(
                    other
                )
            wait_for(lambda: _tiers(url)["write_behind"]["queue_depth"] == 0, "churn written")
            l2 = _tiers(url)["l2"]
            # More written than the device holds: the purged object's blocks were reused.
            assert l2["reclaimed_entries_total"] > 0
            assert l2["written_bytes_total"] > l2["capacity_bytes"]
            while chunk := sock.recv(1 << 20):
                received += chunk
                if len(received) >= len(want) + 100 and received.find(b"\r\n\r\n") > 0:
                    head, _, body = received.partition(b"\r\n\r\n")
                    if len(body) >= len(want):
                        break
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == want[: len(body)], "bytes of another object were sent"
        assert len(body) == len(want)
        wait_for(lambda: _leases(url) == 0, "every lease released")
