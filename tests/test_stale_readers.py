"""Responses still reading an old version while a revalidation stores a new one.

With L2 only, a stale-while-revalidate response reads its slices from disk as the client
takes them; the background revalidation that brings a new version must not pull the old
version's slices out from under it (the response was cut mid-body).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from bench.origin import expected_bytes
from tests.conftest import Origin, ProxyFactory, sha256
from tests.waiting import wait_for

SLICE = 64 * 1024


def _written_to_l2(url: str, slices: int) -> bool:
    stats = httpx.get(f"{url}/_slicecache/stats").json()["tiers"]["write_behind"]
    return bool(stats["queue_depth"] == 0 and stats["write_behind_written"] >= slices)


def _l2_bytes(url: str) -> float:
    return float(httpx.get(f"{url}/_slicecache/stats").json()["tiers"]["l2"]["bytes"])


def _body_or_none(url: str, path: str) -> bytes | None:
    try:
        return httpx.get(f"{url}{path}", timeout=30).content
    except httpx.HTTPError:
        return None


def test_stale_response_on_l2_survives_the_revalidation_that_replaces_it(
    proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    name = "4m-stale-reader-l2.bin"
    path = f"/files/{name}?cc=max-age%3D0,%20stale-while-revalidate%3D600"
    size = 4 * 1024 * 1024
    v1 = origin.app.version(name)
    with proxy(
        slice_size=SLICE,
        l1_cache_size_bytes=0,
        enable_l2_cache=True,
        raw_disk_cache={"device_path": str(tmp_path / "l2.bin"), "total_size": 64 << 20},
    ) as url:
        assert sha256(httpx.get(f"{url}{path}", timeout=30).content) == sha256(
            expected_bytes(name, v1)
        )
        wait_for(lambda: _written_to_l2(url, size // SLICE), "the first version is on L2")
        v2 = origin.app.bump(name)
        received = bytearray()
        with httpx.Client(timeout=30) as client, client.stream("GET", f"{url}{path}") as stale:
            assert stale.headers["x-cache"] == "STALE"
            chunks = stale.iter_raw(SLICE)
            received += next(chunks)
            # The revalidation this stale answer started stores the new version meanwhile.
            new = expected_bytes(name, v2)
            wait_for(lambda: _body_or_none(url, path) == new, "the new version is served")
            try:
                for chunk in chunks:
                    received += chunk
            except httpx.HTTPError as error:
                raise AssertionError(f"stale response cut after {len(received)} bytes") from error
        # Its last reader gone, the old version's slices go: L2 holds one version again.
        wait_for(lambda: _l2_bytes(url) <= size + SLICE, "the old version's slices deleted")
    assert sha256(bytes(received)) == sha256(expected_bytes(name, v1))
