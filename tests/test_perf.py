"""Performance tests mirroring the prototype's seven (STREAMING_PROXY_PERFORMANCE.md).

The box is shared and has 2 cores, so nothing here asserts an absolute time: only ratios
of medians of several samples against a baseline measured side by side in the same run
(each test states the origin's latency and bandwidth it ran against), and memory bounds.
Origin and proxies run as subprocesses (bench.harness), so the proxy's RSS is its own and
the test's client does not share a GIL with either server.
The whole module takes about a minute and a half.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
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


SAMPLES = 3  # per side of each comparison: the median, never one sample


def median(values: list[float]) -> float:
    return statistics.median(values)


def name_of(path: str) -> str:
    return path.split("?", 1)[0].removeprefix("/files/")


def test_ttfb_performance(origin: h.Server, logs: Path) -> None:
    """A cold stream's TTFB is the origin's latency, not its download time.

    Origin: 20 ms latency, 25 MB/s, so a 20 MiB file takes ~0.85 s. Baseline: the same
    downloads straight from the origin, in the same run. The proxy's median TTFB stays
    within 3x the origin's own (a buffering proxy would be ~40x), and under a tenth of
    the origin's median download time.
    """
    params = {"latency_ms": 20, "bandwidth_mbps": 25}
    with slicecache(origin, logs) as proxy:
        assert h.fetch_sync(proxy.url + cold("1m")).ok  # a fresh process's first request
        direct, streamed = [], []
        for _ in range(SAMPLES):  # alternate, so a burst of load hits both alike
            direct.append(h.fetch_sync(origin.url + cold("20m", **params), max_time=60))
            streamed.append(h.fetch_sync(proxy.url + cold("20m", **params), max_time=60))
    assert all(f.ok and f.size == 20 * MiB for f in direct + streamed)
    origin_ttfb = median([f.ttfb for f in direct])
    origin_total = median([f.total for f in direct])
    ttfb = median([f.ttfb for f in streamed])
    print(
        f"median TTFB {ttfb * 1000:.1f} ms (origin alone {origin_ttfb * 1000:.1f} ms); "
        f"the origin's own download takes {origin_total * 1000:.0f} ms"
    )
    assert ttfb < 3 * origin_ttfb
    # The proxy fetches slices in parallel, so its total is shorter than the origin's
    # single stream: the download time to compare with is the origin's.
    assert ttfb < 0.1 * origin_total


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
    # Origin: 20 ms latency, 50 MB/s. Medians of alternated samples, L2 off vs on.
    with slicecache(origin, logs) as off, slicecache(origin, logs, **l2) as on:
        assert device.exists(), "the L2 tier did not create its device file"
        offs, ons = [], []
        for _ in range(SAMPLES):
            # Alternate, so that a burst of load on the box hits both variants alike.
            offs.append(h.fetch_sync(off.url + cold("5m", latency_ms=20, bandwidth_mbps=50)))
            ons.append(h.fetch_sync(on.url + cold("5m", latency_ms=20, bandwidth_mbps=50)))
    assert all(f.ok and f.size == 5 * MiB for f in offs + ons)
    ttfb_ratio = median([f.ttfb for f in ons]) / median([f.ttfb for f in offs])
    time_ratio = median([f.total for f in ons]) / median([f.total for f in offs])
    print(f"median TTFB on/off {ttfb_ratio:.2f}, median time on/off {time_ratio:.2f}")
    assert ttfb_ratio < 2.0
    assert time_ratio < 1.5


def test_concurrent_streaming_performance(origin: h.Server, logs: Path) -> None:
    """8 clients on 8 cold files: all byte-exact, wall time < 3x one client's (median of 3).

    Origin: no latency, 10 MB/s per response (8 MiB: ~0.85 s alone).
    """
    params = {"bandwidth_mbps": 10}
    with slicecache(origin, logs) as proxy:
        singles = [download(proxy.url + cold("8m", **params))[3] for _ in range(SAMPLES)]
        paths = [cold("8m", **params) for _ in range(8)]

        async def all_of_them() -> list[tuple[int, str, float, float]]:
            return await asyncio.gather(*(_download(proxy.url + p) for p in paths))

        t0 = time.perf_counter()
        results = asyncio.run(all_of_them())
        wall = time.perf_counter() - t0
    for path, (size, digest, _, _) in zip(paths, results, strict=True):
        assert size == 8 * MiB
        assert digest == expected_sha256(name_of(path))
    single = median(singles)
    print(f"one client (median of {SAMPLES}) {single:.2f} s, eight at once {wall:.2f} s")
    assert wall < 3 * single


def test_cache_hit_performance(origin: h.Server, logs: Path) -> None:
    """A cache hit is >= 3x faster than the cold fetch (medians of 3) from a 20 ms, 50 MB/s
    origin."""
    with slicecache(origin, logs) as proxy:
        misses, hits = [], []
        for _ in range(SAMPLES):
            path = cold("20m", latency_ms=20, bandwidth_mbps=50)
            misses.append(h.fetch_sync(proxy.url + path))
            hits.append(h.fetch_sync(proxy.url + path))
    assert all(f.ok and f.size == 20 * MiB for f in misses + hits)
    assert [f.x_cache for f in misses] == ["MISS"] * SAMPLES
    assert [f.x_cache for f in hits] == ["HIT"] * SAMPLES, [f.client for f in hits]
    miss, hit = median([f.total for f in misses]), median([f.total for f in hits])
    print(f"median miss {miss * 1000:.0f} ms, hit {hit * 1000:.0f} ms")
    assert hit * 3 <= miss


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
    """Streaming TTFB is >= 10x below the buffering proxy's (medians of 3) for a 20 MiB file
    from a 20 ms, 50 MB/s origin."""
    params = {"latency_ms": 20, "bandwidth_mbps": 50}
    with (
        h.started(h.start_simple_proxy, origin.url, logs) as simple,
        slicecache(origin, logs) as proxy,
    ):
        buffered, streamed = [], []
        for _ in range(SAMPLES):
            buffered.append(h.fetch_sync(simple.url + cold("20m", **params)))
            streamed.append(h.fetch_sync(proxy.url + cold("20m", **params)))
    assert all(f.ok and f.size == 20 * MiB for f in buffered + streamed)
    slow, fast = median([f.ttfb for f in buffered]), median([f.ttfb for f in streamed])
    print(f"median TTFB simple {slow * 1000:.0f} ms, slicecache {fast * 1000:.1f} ms")
    assert fast * 10 <= slow
