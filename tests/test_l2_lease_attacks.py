"""Attacks on L2 leases from outside: a client stalls mid-way through an L2 hit while the
object is purged by prefix or all at once and the L2 is refilled with other objects, so
freed blocks are reused; the stalled client must still get only its object's bytes."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from bench.origin import expected_bytes
from tests.conftest import ProxyFactory
from tests.test_l2_leases import SLICE, _leases, _tiers
from tests.waiting import wait_for


def _purge(url: str, how: str, name: str) -> httpx.Response:
    auth = {"authorization": "Bearer t"}
    if how == "all":
        return httpx.request("PURGE", f"{url}/", headers={**auth, "x-purge-all": "true"})
    if how == "prefix":
        return httpx.request("PURGE", f"{url}/files/*", headers=auth, timeout=30)
    return httpx.request("PURGE", f"{url}/files/{name}", headers=auth, timeout=30)


@pytest.mark.parametrize("how", ["all", "prefix"])
@pytest.mark.parametrize("ranged", [False, True])
def test_a_stalled_l2_hit_keeps_its_bytes_through_wide_purges_and_churn(
    proxy: ProxyFactory, tmp_path: Path, how: str, ranged: bool
) -> None:
    _stalled_l2_hit(proxy, tmp_path, how, ranged, "1.1")


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_stalled_l2_hit_keeps_its_bytes_through_a_url_purge_and_churn(
    proxy: ProxyFactory, tmp_path: Path, version: str
) -> None:
    _stalled_l2_hit(proxy, tmp_path, "url", True, version)


def _stalled_l2_hit(
    proxy: ProxyFactory, tmp_path: Path, how: str, ranged: bool, version: str
) -> None:
    settings = {
        "slice_size": SLICE,
        "enable_l2_cache": True,
        "l1_cache_size_bytes": 0,
        "raw_disk_cache": {"device_path": str(tmp_path / "l2.bin"), "total_size": 32 << 20},
        "purge": {"enabled": True, "auth_token": "t"},
    }
    name = "16m-stall-wide.bin"
    want = expected_bytes(name)
    first = 12345 if ranged else 0
    if ranged:
        want = want[first:]
    with proxy(**settings) as url:
        assert httpx.get(f"{url}/files/{name}", timeout=30).status_code == 200
        wait_for(lambda: _tiers(url)["write_behind"]["queue_depth"] == 0, "write-behind drained")
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(60)
            sock.connect((host, int(port)))
            rng = f"Range: bytes={first}-\r\n" if ranged else ""
            sock.sendall(f"GET /files/{name} HTTP/{version}\r\nHost: t\r\n{rng}\r\n".encode())
            received = sock.recv(64 * 1024)
            wait_for(lambda: _leases(url) >= 1, "the stalled response holds a lease")
            assert _purge(url, how, name).status_code == 200
            for i in range(12):  # 48 MiB of other objects through a 32 MiB L2
                other = f"4m-wide-churn-{i}.bin"
                got = httpx.get(f"{url}/files/{other}", timeout=30).content
                assert got == expected_bytes(other)
            wait_for(lambda: _tiers(url)["write_behind"]["queue_depth"] == 0, "churn written")
            l2 = _tiers(url)["l2"]
            assert l2["written_bytes_total"] > l2["capacity_bytes"]
            while True:
                head, _, body = received.partition(b"\r\n\r\n")
                if body and len(body) >= len(want):
                    break
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 206" if ranged else b"HTTP/1.1 200")
        assert body == want[: len(body)], "bytes of another object were sent"
        assert len(body) == len(want)
        wait_for(lambda: _leases(url) == 0, "every lease released")


def test_pipelined_l2_hits_on_a_stalled_connection_keep_their_bytes(
    proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Five GETs pipelined on one connection that reads nothing: the first L2 hit stalls in
    the transport, everything is purged and the L2 refilled; every response then read is
    its own object's bytes, whether it came from L2 or, after the purge, from the origin."""
    settings = {
        "slice_size": SLICE,
        "enable_l2_cache": True,
        "l1_cache_size_bytes": 0,
        "raw_disk_cache": {"device_path": str(tmp_path / "l2.bin"), "total_size": 24 << 20},
        "purge": {"enabled": True, "auth_token": "t"},
    }
    names = [f"3m-pipelined-{i}.bin" for i in range(5)]
    with proxy(**settings) as url:
        for name in names:
            assert httpx.get(f"{url}/files/{name}", timeout=30).status_code == 200
        wait_for(lambda: _tiers(url)["write_behind"]["queue_depth"] == 0, "write-behind drained")
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            sock.settimeout(60)
            sock.connect((host, int(port)))
            sock.sendall(
                b"".join(f"GET /files/{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for n in names)
            )
            data = sock.recv(1000)
            wait_for(lambda: _leases(url) >= 1, "the stalled response holds a lease")
            assert _purge(url, "all", "").status_code == 200
            for i in range(10):
                other = f"4m-pipelined-churn-{i}.bin"
                assert httpx.get(f"{url}/files/{other}", timeout=30).content == expected_bytes(
                    other
                )
            wait_for(lambda: _tiers(url)["write_behind"]["queue_depth"] == 0, "churn written")
            pos = 0
            for name in names:
                while data.find(b"\r\n\r\n", pos) < 0:
                    data += sock.recv(1 << 20)
                end = data.index(b"\r\n\r\n", pos)
                head = data[pos:end].decode("latin-1").lower()
                assert head.startswith("http/1.1 200")
                length = int(head.split("content-length: ")[1].split("\r\n")[0])
                while len(data) < end + 4 + length:
                    chunk = sock.recv(1 << 20)
                    assert chunk, "connection closed early"
                    data += chunk
                assert data[end + 4 : end + 4 + length] == expected_bytes(name), name
                pos = end + 4 + length
        wait_for(lambda: _leases(url) == 0, "every lease released")
