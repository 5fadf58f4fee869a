"""Clients that read nothing must not lock every other client out of the byte budget."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from bench.origin import expected_sha256
from tests.conftest import Origin, ProxyFactory, sha256
from tests.waiting import wait_for

SLICE = 64 * 1024
MiB = 1024 * 1024


def _in_flight(url: str) -> float:
    text = httpx.get(f"{url}/_slicecache/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("slicecache_in_flight_bytes "))
    return float(line.split()[1])


@pytest.mark.parametrize(
    ("clients", "cache_bytes"),
    [
        (8, 100 * MiB),  # stored objects: their slices go to the cache
        (60, 4 * MiB),  # larger than the cache: streamed, not stored
    ],
)
def test_idle_readers_do_not_starve_a_cold_request(
    proxy: ProxyFactory, origin: Origin, clients: int, cache_bytes: int
) -> None:
    # Clients that request cold objects and read nothing: their fetch-ahead queued for
    # the budget in arrival order, and a waiting run of 4 slices blocked everybody behind
    # it, so that a new client's cold GET waited for budget until its 504.
    tag = f"{time.monotonic_ns()}"
    settings = {"slice_size": SLICE, "max_in_flight_bytes": MiB, "read_timeout": 5.0}
    with proxy(l1_cache_size_bytes=cache_bytes, **settings) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = []
        try:
            for i in range(clients):
                conn = socket.socket()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                conn.connect(("127.0.0.1", port))
                request = f"GET /files/20m-idle-{tag}-{i}.bin HTTP/1.1\r\nHost: x\r\n\r\n"
                conn.sendall(request.encode())
                idle.append(conn)
            wait_for(lambda: _in_flight(url) >= MiB // 2, "the idle clients hold budget")
            name = f"2m-fresh-{tag}.bin"
            response = httpx.get(f"{url}/files/{name}", timeout=60)
            assert response.status_code == 200
            assert sha256(response.content) == expected_sha256(name)
        finally:
            for conn in idle:
                conn.close()
        wait_for(lambda: _in_flight(url) == 0, "budget back to zero")
