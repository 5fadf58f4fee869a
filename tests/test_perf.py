"""Performance tests mirroring the prototype's seven (STREAMING_PROXY_PERFORMANCE.md).

The box is shared and has 2 cores, so nothing here asserts an absolute time: only ratios
between runs made side by side, and memory bounds. Origin and proxies run as subprocesses
(bench.harness), so the proxy's RSS is its own and the test's client does not share a GIL
with either server. The whole module takes well under a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench import harness as h
from bench.origin import expected_sha256

pytestmark = [pytest.mark.perf, pytest.mark.timeout(90)]

MiB = 1024 * 1024
RUN = uuid.uuid4().hex[:6]  # unique names: a "cold" file really is cold in every run
_counter = 0


def cold(size: str, **params: Any) -> str:
    """A never-requested file name; ``params`` become origin query overrides."""
    global _counter
    _counter += 1
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/files/{size}-{RUN}-{_counter}.bin" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("perf-logs")


@pytest.fixture(scope="module")
def origin(logs: Path) -> Iterator[h.Server]:
    server = h.start_origin(logs)
    try:
        yield server
    finally:
        server.stop()


def slicecache(origin: h.Server, logs: Path, **settings: Any) -> Any:
    return h.started(h.start_slicecache, origin.url, logs, **settings)


async def _download(url: str) -> tuple[int, str, float, float]:
    """(bytes, sha256, ttfb, total) read with a Python client: needed to hash the body."""
    digest = hashlib.sha256()
    size = 0
    t0 = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        assert resp.status == 200, resp.status
        first = await resp.content.readany()
        ttfb = time.perf_counter() - t0
        digest.update(first)
        size += len(first)
        while chunk := await resp.content.readany():
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest(), ttfb, time.perf_counter() - t0


def download(url: str) -> tuple[int, str, float, float]:
    return asyncio.run(_download(url))


def name_of(path: str) -> str:
    return path.split("?", 1)[0].removeprefix("/files/")


def test_ttfb_performance(origin: h.Server, logs: Path) -> None:
    """TTFB is < 1 % of the download time of a 100 MiB file from a bandwidth-capped origin."""
    with slicecache(origin, logs) as proxy:
        assert h.fetch_sync(proxy.url + cold("1m")).ok  # a fresh process's first request
        fetch = h.fetch_sync(proxy.url + cold("100m", bandwidth_mbps=25), max_time=60)
    assert fetch.ok and fetch.size == 100 * MiB
    print(f"TTFB {fetch.ttfb * 1000:.2f} ms of {fetch.total * 1000:.0f} ms total")
    assert fetch.ttfb < 0.01 * fetch.total


def test_memory_stability(origin: h.Server, logs: Path) -> None:
    """Ten 10 MiB files one after the other grow the proxy's RSS by < 20 MB."""
    with slicecache(origin, logs, l1_cache_size_bytes=4 * MiB) as proxy:
        assert h.fetch_sync(proxy.url + cold("10m")).ok  # imports, pools, allocator arenas
        time.sleep(0.1)
        start = proxy.rss()
        for _ in range(10):
            fetch = h.fetch_sync(proxy.url + cold("10m"))
            assert fetch.ok and fetch.size == 10 * MiB
        time.sleep(0.1)
        growth = proxy.rss() - start
    print(f"RSS {start / MiB:.1f} MiB -> +{growth / MiB:.1f} MiB after 10 x 10 MiB")
    assert growth < 20 * 1_000_000


def test_cache_write_performance(origin: h.Server, logs: Path, tmp_path: Path) -> None:
    """Writing slices to L2 does not slow the stream: TTFB and time with L2 on ~ L2 off."""
    device = tmp_path / "l2.bin"
    l2 = {
        "enable_l2_cache": True,
        "raw_disk_cache__device_path": str(device),
        "raw_disk_cache__total_size": 64 * MiB,
    }
    with slicecache(origin, logs) as off, slicecache(origin, logs, **l2) as on:
        if not device.exists():
            pytest.skip("the L2 tier is not wired into the app yet (no device file created)")
        ratios = []
        for size in ("1m", "5m", "10m"):
            # Alternate, so that a burst of load on the box hits both variants alike.
            a = h.fetch_sync(off.url + cold(size, latency_ms=20, bandwidth_mbps=50))
            b = h.fetch_sync(on.url + cold(size, latency_ms=20, bandwidth_mbps=50))
            assert a.ok and b.ok
            ratios.append((b.ttfb / a.ttfb, b.total / a.total))
            print(f"{size}: TTFB on/off {b.ttfb / a.ttfb:.2f}, time on/off {b.total / a.total:.2f}")
    assert max(r[0] for r in ratios) < 2.0
    assert max(r[1] for r in ratios) < 1.5


def test_concurrent_streaming_performance(origin: h.Server, logs: Path) -> None:
    """8 clients on 8 different cold files: all byte-exact, wall time < 3x one client's."""
    params = {"bandwidth_mbps": 10}
    with slicecache(origin, logs) as proxy:
        single = download(proxy.url + cold("16m", **params))
        paths = [cold("16m", **params) for _ in range(8)]

        async def all_of_them() -> list[tuple[int, str, float, float]]:
            return await asyncio.gather(*(_download(proxy.url + p) for p in paths))

        t0 = time.perf_counter()
        results = asyncio.run(all_of_them())
        wall = time.perf_counter() - t0
    for path, (size, digest, _, _) in zip(paths, results, strict=True):
        assert size == 16 * MiB
        assert digest == expected_sha256(name_of(path))
    print(f"one client {single[3]:.2f} s, eight at once {wall:.2f} s")
    assert wall < 3 * single[3]


def test_cache_hit_performance(origin: h.Server, logs: Path) -> None:
    """A cache hit is >= 3x faster than the cold fetch from a 50 MB/s, 20 ms origin."""
    with slicecache(origin, logs) as proxy:
        path = cold("50m", latency_ms=20, bandwidth_mbps=50)
        miss = h.fetch_sync(proxy.url + path)
        hit = h.fetch_sync(proxy.url + path)
    assert miss.ok and hit.ok and hit.size == miss.size == 50 * MiB
    assert hit.x_cache in ("HIT", "")  # "" only with the aiohttp fallback client
    print(f"miss {miss.total * 1000:.0f} ms, hit {hit.total * 1000:.0f} ms")
    assert hit.total * 3 <= miss.total


def test_large_file_streaming(origin: h.Server, logs: Path) -> None:
    """200 MiB arrive byte-exact while the proxy's RSS grows by < 50 MB."""
    with slicecache(origin, logs, l1_cache_size_bytes=4 * MiB) as proxy:
        assert h.fetch_sync(proxy.url + cold("4m")).ok
        time.sleep(0.1)
        start = proxy.rss()
        path = cold("200m")
        with h.RssSampler(proxy, 0.05) as rss:
            size, digest, _, _ = download(proxy.url + path)
    assert size == 200 * MiB
    assert digest == expected_sha256(name_of(path))
    print(f"RSS {start / MiB:.1f} MiB, peak +{(rss.peak - start) / MiB:.1f} MiB")
    assert rss.peak - start < 50 * 1_000_000


def test_streaming_vs_simple_proxy_comparison(origin: h.Server, logs: Path) -> None:
    """Streaming TTFB is >= 10x below the buffering proxy's for a 50 MiB capped file."""
    params = {"latency_ms": 20, "bandwidth_mbps": 50}
    with (
        h.started(h.start_simple_proxy, origin.url, logs) as simple,
        slicecache(origin, logs) as proxy,
    ):
        buffered = h.fetch_sync(simple.url + cold("50m", **params))
        streamed = h.fetch_sync(proxy.url + cold("50m", **params))
    assert buffered.ok and streamed.ok
    assert buffered.size == streamed.size == 50 * MiB
    print(f"simple TTFB {buffered.ttfb * 1000:.0f} ms, slicecache {streamed.ttfb * 1000:.1f} ms")
    assert streamed.ttfb * 10 <= buffered.ttfb
