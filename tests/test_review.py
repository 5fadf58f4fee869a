"""Reviewer's tests: each one shows a defect (or guards a risky behaviour that was checked)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.origin import expected_bytes
from cache import keys, tiered
from cache.memory import MemoryStore
from cache.protocol import SliceData, Store
from cache.rawdisk import RawDiskStore
from cache.tiered import TieredStore
from settings import RawDiskCacheSettings
from tests.conftest import Origin, ProxyFactory
from tests.waiting import wait_for, wait_until_held

SLICE = 64 * 1024


def test_small_range_of_a_cold_slice_is_cached(proxy: ProxyFactory, origin: Origin) -> None:
    path = "/files/4m-review-small-range.bin"
    target = f"{path}?bandwidth_mbps=2"  # the 1 MiB slice takes ~0.5 s to arrive
    with proxy(slice_size=1024 * 1024) as url:
        for _ in range(3):
            r = httpx.get(f"{url}{target}", headers={"Range": "bytes=0-99"}, timeout=10)
            assert r.status_code == 206
            assert r.content == expected_bytes("4m-review-small-range.bin", 1, 0, 99)
            r = httpx.get(f"{url}{target}", headers={"Range": "bytes=2097152-2097251"}, timeout=10)
            assert r.status_code == 206
    # nginx's slice module stores the whole slice whatever part the client wanted; here
    # every small range re-fetches its slice because the fill is cancelled.
    assert len(origin.requests_for(path)) == 2, origin.requests_for(path)


def test_set_cookie_reaches_the_client_of_a_private_sliced_response(proxy: ProxyFactory) -> None:
    # A private (per-user) download: never stored, so nothing justifies dropping the
    # origin's Set-Cookie on its way to the one client it belongs to.
    target = "/files/1m-review-cookie.bin?cc=private&setcookie=session%3Dabc"
    with proxy(slice_size=SLICE) as url:
        direct = httpx.get(f"{url}{target}", headers={"Range": "bytes=0-9"})
    assert direct.status_code == 206
    assert direct.headers.get("set-cookie") == "session=abc"


class _SlowL2(MemoryStore):
    """An L2 whose reads take a while: the bytes are read at once, handed back later."""

    name = "l2"

    def __init__(self) -> None:
        super().__init__(64 * 1024 * 1024)
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()

    async def get_slice(self, key: str, *, next_key: str | None = None) -> SliceData | None:
        data = await super().get_slice(key, next_key=next_key)
        self.reading.set()
        await self.gate.wait()
        return data


async def _slow_raw_disk(path: Path) -> tuple[RawDiskStore, asyncio.Event, asyncio.Event]:
    """The real raw-disk store on a temp file, its reads handed back when a gate opens."""
    store = await RawDiskStore.open(
        RawDiskCacheSettings(device_path=str(path), total_size=16 * 1024 * 1024)
    )
    gate, reading = asyncio.Event(), asyncio.Event()
    real_get = store.get_slice

    async def get_slice(key: str, *, next_key: str | None = None) -> SliceData | None:
        data = await real_get(key, next_key=next_key)  # the real read, checksum and all
        reading.set()
        await gate.wait()
        return data

    store.get_slice = get_slice  # type: ignore[method-assign]
    return store, gate, reading


@pytest.mark.parametrize("tier", ["fake", "rawdisk"])
async def test_l2_read_in_flight_across_a_purge_does_not_resurrect_the_slice(
    tier: str, tmp_path: Path
) -> None:
    l2: Store
    if tier == "fake":
        fake = _SlowL2()
        l2, gate, reading = fake, fake.gate, fake.reading
    else:
        l2, gate, reading = await _slow_raw_disk(tmp_path / "l2.bin")
    store = TieredStore(MemoryStore(64 * 1024 * 1024), l2)
    purged = "http://o:80/a.bin"
    key = keys.slice_key(purged, "v1", 0)
    assert await l2.put_slice(key, b"old bytes", None)  # really stored in the tier
    reader = asyncio.create_task(store.get_slice(key))
    await asyncio.wait_for(reading.wait(), 30)  # the L2 read is under way
    await store.delete(purged)  # PURGE answers 200
    # Unrelated traffic: one write-behind item drains, and the purge record goes with it.
    await store.put_slice(keys.slice_key("http://o:80/b.bin", "v1", 0), b"b", None)
    await store.flush()
    gate.set()
    await reader
    assert await store.get_slice(key) is None  # the purged slice came back into L1
    await store.close()


async def test_l2_metadata_read_in_flight_across_a_purge_does_not_resurrect_the_entry(
    tmp_path: Path,
) -> None:
    """As the slice case above, for an object's metadata, on the real raw-disk store: a
    read that started before a PURGE must not hand the purged entry back or copy it to L1."""
    l2 = await RawDiskStore.open(
        RawDiskCacheSettings(device_path=str(tmp_path / "l2.bin"), total_size=16 << 20)
    )
    gate, reading = asyncio.Event(), asyncio.Event()
    real_get_meta = l2.get_meta

    async def get_meta(key: str) -> bytes | None:
        data = await real_get_meta(key)  # the real read, checksum and all
        reading.set()
        await gate.wait()
        return data

    l2.get_meta = get_meta  # type: ignore[method-assign]
    store = TieredStore(MemoryStore(64 << 20), l2)
    purged = "http://o:80/a.bin"
    assert await l2.put_meta(purged, b"old metadata", None)  # really stored in the tier
    reader = asyncio.create_task(store.get_meta(purged))
    await asyncio.wait_for(reading.wait(), 30)  # the L2 read is under way
    await store.delete(purged)  # PURGE answers 200
    gate.set()
    assert await reader is None, "a read from before the purge returned the purged entry"
    assert await store.l1.get_meta(purged) is None  # type: ignore[union-attr]
    await store.close()


@pytest.mark.parametrize("tier", ["l1", "l1+rawdisk"])
@pytest.mark.parametrize("purge", ["object", "prefix", "all"])
async def test_a_slice_fetched_before_a_purge_is_never_stored_after_it(
    tier: str, purge: str, tmp_path: Path
) -> None:
    """A fill's epoch is taken when its origin request goes out; a PURGE answered while it
    was in flight covers it: its put afterwards is refused in every tier, L1 included."""
    l2 = None
    if tier == "l1+rawdisk":
        l2 = await RawDiskStore.open(
            RawDiskCacheSettings(device_path=str(tmp_path / "l2.bin"), total_size=16 << 20)
        )
    store = TieredStore(MemoryStore(64 << 20), l2)
    purged = "http://o:80/a.bin"
    key = keys.slice_key(purged, "v1", 3)
    other = keys.slice_key("http://o:80/b.bin", "v1", 0)
    epoch = store.epoch  # the fill's origin request goes out
    if purge == "object":
        await store.delete(purged)
    elif purge == "prefix":
        await store.delete_prefix("http://o:80/a")
    else:
        await store.clear()
    assert not await store.put_slice(key, b"old bytes", None, epoch=epoch)
    await store.flush()
    assert await store.get_slice(key) is None
    assert not store.contains_slice(key)
    if l2 is not None:
        assert await l2.get_slice(key) is None
    # A fill that started after the purge is stored (the check is not "refuse everything").
    assert await store.put_slice(other, b"new bytes", None, epoch=store.epoch)
    assert bytes(await store.get_slice(other) or b"") == b"new bytes"
    await store.close()


async def test_purge_records_do_not_pile_up_without_l2(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small bounds, so that ten times as many purges as are remembered run in milliseconds.
    monkeypatch.setattr(tiered, "OBJECT_PURGE_RECORDS", 100)
    monkeypatch.setattr(tiered, "PURGE_RECORDS", 10)
    store = TieredStore(MemoryStore(1024 * 1024), None)
    before_all = store.epoch
    for n in range(1_000):
        await store.delete(f"http://o:80/files/{n}.bin")
        await store.delete_prefix(f"http://o:80/dir{n}/")
    before_last = store.epoch - 2  # the last object purge and the last prefix purge
    # Records are bounded: forgetting is what keeps them so, not the container's maxsize.
    assert len(store._object_purges) == 100
    assert len(store._purges) == 10
    # Forgetting is conservative: an operation older than every kept record counts as
    # purged, whatever its key; a recent one is judged on the kept records, key by key.
    unrelated = keys.slice_key("http://o:80/other.bin", "v1", 0)
    assert store.purged_since(before_all, unrelated)
    assert not store.purged_since(before_last, unrelated)
    assert store.purged_since(before_last, keys.slice_key("http://o:80/files/999.bin", "v1", 0))
    assert store.purged_since(before_last, keys.slice_key("http://o:80/dir999/a.bin", "v1", 0))
    assert not store.purged_since(store.epoch, unrelated)


TOKEN = "review-token"


def _purge(url: str, path: str) -> httpx.Response:
    return httpx.request("PURGE", f"{url}{path}", headers={"authorization": f"Bearer {TOKEN}"})


def _tiers(tier: str, tmp_path: Path) -> dict[str, Any]:
    """Proxy settings: L1 only, or L1 over the real raw-disk store on a temp file."""
    if tier == "l1":
        return {}
    device = {"device_path": str(tmp_path / "l2.bin"), "total_size": 64 * 1024 * 1024}
    return {"enable_l2_cache": True, "raw_disk_cache": device}


@pytest.mark.parametrize("tier", ["l1", "l1-rawdisk"])
def test_purging_one_object_does_not_stop_caching_of_another(
    proxy: ProxyFactory, origin: Origin, tier: str, tmp_path: Path
) -> None:
    path = f"/files/1m-review-bystander-{tier}.bin"
    target = f"{path}?bandwidth_mbps=0.5"  # 2 s of body: the fills outlast the purge
    settings = {"purge": {"enabled": True, "auth_token": TOKEN}, "slice_size": SLICE}
    with proxy(**settings, **_tiers(tier, tmp_path)) as url:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            download = pool.submit(httpx.get, f"{url}{target}", timeout=30)
            # Its slices are in flight: the origin has seen a fill after the probe.
            wait_for(lambda: len(origin.requests_for(path)) >= 2, "a fill after the probe")
            assert _purge(url, "/files/unrelated-review.bin").status_code == 200
            first = download.result()
        assert first.status_code == 200
        again = httpx.get(f"{url}{target}", timeout=30)
    # A PURGE of an unrelated URL made every fill in flight discard its bytes.
    assert again.headers["x-cache"] == "HIT", again.headers["x-cache-slices"]


def test_purging_one_object_during_anothers_probe_keeps_it_cacheable(
    proxy: ProxyFactory, origin: Origin
) -> None:
    path = "/files/100k-review-probe.bin"
    target = f"{path}?hold=review-probe"  # the origin holds the probe until released
    with proxy(purge={"enabled": True, "auth_token": TOKEN}, slice_size=SLICE) as url:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            download = pool.submit(httpx.get, f"{url}{target}", timeout=30)
            wait_until_held(origin.app, "review-probe")  # the probe is out
            assert _purge(url, "/files/unrelated-review.bin").status_code == 200
            origin.app.release("review-probe")
            assert download.result().status_code == 200
        before = len(origin.requests_for(path))
        again = httpx.get(f"{url}{target}", timeout=30)
    # The bystander's probe answer was treated as "purged": stored nowhere, not shared.
    assert len(origin.requests_for(path)) == before, again.headers.get("cache-status")


def test_two_ranges_in_one_cold_slice(proxy: ProxyFactory) -> None:
    name = "2m-review-multipart.bin"
    target = f"/files/{name}?bandwidth_mbps=2"
    with proxy(slice_size=1024 * 1024) as url:
        try:
            r = httpx.get(
                f"{url}{target}", headers={"Range": "bytes=0-9,500000-500009"}, timeout=10
            )
        except httpx.HTTPError as error:  # the proxy cut the response short
            raise AssertionError(f"multipart response aborted: {error!r}") from None
    assert r.status_code == 206
    assert expected_bytes(name, 1, 500000, 500009) in r.content


def _origin_saw(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.json()["headers"]}


def test_sliced_fetches_send_the_origin_host_not_the_clients(
    proxy: ProxyFactory, origin: Origin
) -> None:
    path = "/echo/review-host"
    origin_host = origin.url.removeprefix("http://")
    # cache_ttl: /echo says nothing about freshness; the victim must be able to get a hit.
    with proxy(slice_size=SLICE, cache_ttl=3600) as url:  # preserve_host off: origin's key
        attacker = httpx.get(f"{url}{path}", headers={"host": "evil.example"})
        victim = httpx.get(f"{url}{path}")
    # The probe forwarded the client's Host, so a vhost-aware origin's answer for
    # evil.example is stored under the key of the origin's own host and served to all.
    assert _origin_saw(victim)["host"] == origin_host
    assert _origin_saw(attacker)["host"] == origin_host


def test_sliced_fetches_drop_hop_by_hop_fields_and_add_via(proxy: ProxyFactory) -> None:
    with proxy(slice_size=SLICE) as url:
        r = httpx.get(
            f"{url}/echo/review-hop",
            headers={
                "proxy-authorization": "Basic c2VjcmV0",  # credentials for this hop only
                "connection": "x-hop",
                "x-hop": "1",
                "te": "trailers",
            },
        )
    seen = _origin_saw(r)
    assert "proxy-authorization" not in seen
    assert "x-hop" not in seen and "te" not in seen and "connection" not in seen
    assert "1.1 slicecache" in seen.get("via", "")  # RFC 9110 7.6.3


def test_probe_holding_a_pool_connection_while_waiting_for_budget_deadlocks(
    proxy: ProxyFactory, origin: Origin
) -> None:
    # Two cold downloads, one origin connection, a budget of one 4 MiB slice. B's probe
    # takes the connection A's slice 0 just freed and, with more unread body than aiohttp
    # buffers, holds it while its first fill waits for the budget; A's slice 1 holds the
    # budget and waits for the connection. Neither moves until a client gives up.
    slice_size = 4 * 1024 * 1024
    settings = {
        "slice_size": slice_size,
        "max_in_flight_bytes": slice_size,
        "upstream_pool_size": 1,
        "slices_per_subrequest": 1,
        "max_concurrent_subrequests": 2,
    }
    with proxy(**settings) as url:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a = pool.submit(
                httpx.get, f"{url}/files/12m-review-deadlock-a.bin?bandwidth_mbps=16", timeout=3
            )
            # A's slice 0 is streaming on the only connection.
            wait_for(lambda: origin.requests_for("/files/12m-review-deadlock-a.bin"), "A's probe")
            b = pool.submit(httpx.get, f"{url}/files/8m-review-deadlock-b.bin", timeout=3)
            try:
                statuses = (a.result().status_code, b.result().status_code)
            except httpx.TimeoutException as error:
                raise AssertionError(f"requests stuck: {error!r}") from None
    assert statuses == (200, 200)


@pytest.mark.parametrize("tier", ["l1", "l1-rawdisk"])
def test_revalidation_answered_after_a_purge_does_not_restore_the_entry(
    proxy: ProxyFactory, origin: Origin, tier: str, tmp_path: Path
) -> None:
    token = f"review-reval-{tier}"
    target = f"/files/100k-review-reval-{tier}.bin?hold={token}"
    settings = {"purge": {"enabled": True, "auth_token": TOKEN}, "slice_size": SLICE}
    with proxy(**settings, **_tiers(tier, tmp_path)) as url:
        origin.app.release(token)
        assert httpx.get(f"{url}{target}").status_code == 200  # stored
        origin.app.released.discard(token)  # hold the next origin request
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            revalidating = pool.submit(
                httpx.get, f"{url}{target}", headers={"cache-control": "no-cache"}, timeout=10
            )
            wait_until_held(origin.app, token)  # the conditional probe is out
            assert _purge(url, target).json()["purged"] >= 1
            origin.app.release(token)
            assert revalidating.result().status_code == 200
        after = httpx.get(f"{url}{target}", headers={"cache-control": "only-if-cached"})
    # The purge's 200 promised the entry is gone; the 304 that arrived later put the
    # metadata back (a 200/206 probe in the same window is refused storage as "purged").
    assert after.status_code == 504, after.headers.get("cache-status")


def test_guard_304_and_head_on_the_sliced_path(proxy: ProxyFactory) -> None:
    # Checked and sound: a 304 carries validators, Via and Age but no Content-Length or
    # Content-Type; a HEAD announces the full length without a body.
    target = "/files/300000-review-guard.bin"
    with proxy(slice_size=SLICE) as url:
        full = httpx.get(f"{url}{target}")
        etag = full.headers["etag"]
        not_modified = httpx.get(f"{url}{target}", headers={"if-none-match": etag})
        head = httpx.head(f"{url}{target}")
    assert not_modified.status_code == 304
    assert not_modified.headers["etag"] == etag
    assert "content-length" not in not_modified.headers
    assert "content-type" not in not_modified.headers
    assert "slicecache" in not_modified.headers["via"] and "age" in not_modified.headers
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "300000"
