"""Issue 11 (items 4, 5, 9, 10, 11): shared fills, purge epochs, L2 backpressure,
qualified private/no-cache, and the event-loop cost of X-Cache-Slices and invalidation.

Most tests run the real proxy in front of :class:`TinyOrigin`, a small ASGI origin whose
answers each test shapes (headers, refusals, delays), and which records what it was sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app.edge.httpserver import HttpProtocol
from app.main import create_app
from settings import Settings
from tests.servers import run_asgi_in_thread

KiB = 1024
MiB = 1024 * KiB
SLICE = 64 * KiB

Headers = list[tuple[str, str]]


def _body(size: int, seed: int = 1) -> bytes:
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{block}".encode()).digest()
        block += 1
    return bytes(out[:size])


class TinyOrigin:
    """One object per path, Range-capable; ``refuse``/``headers_for`` shape each answer."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.headers: dict[str, Headers] = {}  # extra response headers per path
        self.not_modified: dict[str, Headers] = {}  # a 304's headers, per path
        self.etag: dict[str, str] = {}
        self.delay: dict[str, float] = {}  # seconds before answering a range past slice 0
        # (request headers, first byte) -> a status to refuse with, or None
        self.refuse: Callable[[dict[str, str], int], int | None] = lambda h, f: None
        # (request headers, path) -> an ETag override (a per-client representation)
        self.etag_for: Callable[[dict[str, str], str], str | None] = lambda h, p: None
        self.log: list[tuple[str, dict[str, str]]] = []

    def add(self, path: str, size: int, headers: Headers | None = None, etag: str = "") -> bytes:
        body = _body(size, seed=len(self.bodies) + size)
        self.bodies[path] = body
        self.headers[path] = headers or []
        self.etag[path] = etag or f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        return body

    def requests(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.log if p == path]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.log.append((path, headers))
        body = self.bodies.get(path)
        if body is None:
            await self._send(send, 404, [], b"")
            return
        etag = self.etag_for(headers, path) or self.etag[path]
        extra = [("etag", etag), ("accept-ranges", "bytes"), *self.headers[path]]
        if headers.get("if-none-match") == etag:
            await self._send(send, 304, [("etag", etag), *self.not_modified.get(path, [])], b"")
            return
        first, last = 0, len(body) - 1
        status = 200
        spec = headers.get("range", "")
        if spec.startswith("bytes="):
            lo, _, hi = spec[6:].partition("-")
            first, last = int(lo), min(int(hi or last), len(body) - 1)
            status = 206
            extra.append(("content-range", f"bytes {first}-{last}/{len(body)}"))
        if first > 0 and self.delay.get(path):
            await asyncio.sleep(self.delay[path])
        refused = self.refuse(headers, first)
        if refused is not None:
            await self._send(send, refused, [], b"refused")
            return
        await self._send(send, status, extra, body[first : last + 1])

    @staticmethod
    async def _send(send: Any, status: int, headers: Headers, body: bytes) -> None:
        raw = [(k.encode(), v.encode()) for k, v in headers]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


@contextmanager
def tiny_setup(**overrides: Any) -> Iterator[tuple[TinyOrigin, str]]:
    origin = TinyOrigin()
    with run_asgi_in_thread(origin) as origin_url:
        overrides.setdefault("upstream_address", origin_url)
        overrides.setdefault("slice_size", SLICE)
        app = create_app(Settings(**overrides), configure_logs=False)
        with run_asgi_in_thread(
            app, proxy_headers=False, date_header=False, http=HttpProtocol
        ) as url:
            yield origin, url


def _l2(tmp_path: Path, size: int = 64 * MiB) -> dict[str, Any]:
    return {
        "enable_l2_cache": True,
        "raw_disk_cache": {"device_path": str(tmp_path / "l2.bin"), "total_size": size},
    }


# --- item 10: qualified private / no-cache, and a 304 that changes storability ------------


def test_fields_named_by_qualified_private_and_no_cache_are_not_shared() -> None:
    cc = 'max-age=600, private="X-User-Token", no-cache="X-Session-Hint"'
    with tiny_setup() as (origin, url):
        origin.add(
            "/small.bin",
            1000,
            [("cache-control", cc), ("x-user-token", "alice"), ("x-session-hint", "a")],
        )
        origin.add(
            "/big.bin",
            3 * SLICE,
            [("cache-control", cc), ("x-user-token", "alice"), ("x-session-hint", "a")],
        )
        for path in ("/small.bin", "/big.bin"):
            first = httpx.get(f"{url}{path}")
            second = httpx.get(f"{url}{path}")
            assert first.status_code == second.status_code == 200
            assert second.headers["x-cache"] == "HIT", path
            # The response that fetched it may carry them; a stored copy never does.
            assert "x-user-token" not in second.headers, path
            assert "x-session-hint" not in second.headers, path
            assert first.headers.get("x-user-token") == "alice", path


def test_a_304_that_makes_the_stored_response_private_is_not_kept_shared() -> None:
    with tiny_setup() as (origin, url):
        body = origin.add("/turns-private.bin", 3 * SLICE, [("cache-control", "max-age=0")])
        first = httpx.get(f"{url}/turns-private.bin")
        assert first.status_code == 200 and first.content == body
        origin.not_modified["/turns-private.bin"] = [("cache-control", "private, max-age=600")]
        revalidated = httpx.get(f"{url}/turns-private.bin")
        assert revalidated.status_code == 200 and revalidated.content == body
        after = httpx.get(f"{url}/turns-private.bin", headers={"cache-control": "only-if-cached"})
        assert after.status_code == 504, "a response the origin made private is still shared"


# --- item 4: shared fills carry no client's headers -------------------------------------

CLIENT_FIELDS = ("cookie", "authorization", "x-forwarded-for", "x-user-id")


def _download(url: str, headers: dict[str, str]) -> tuple[int, bytes | None]:
    try:
        response = httpx.get(url, headers=headers, timeout=20)
    except httpx.HTTPError:
        return -1, None  # aborted mid-body
    return response.status_code, response.content


def test_a_client_the_origin_refuses_does_not_break_another_clients_shared_fills() -> None:
    with tiny_setup(max_concurrent_subrequests=4) as (origin, url):
        body = origin.add("/shared.bin", 6 * SLICE, [("cache-control", "public, max-age=600")])
        origin.delay["/shared.bin"] = 0.5  # fills run long enough for B to join them
        # The origin refuses this one client (a banned session, a rate limit on its IP).
        origin.refuse = lambda h, first: (
            403 if first > 0 and "banned" in h.get("cookie", "") else None
        )
        blocked = {"cookie": "session=banned", "authorization": "Bearer a", "x-user-id": "a"}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a = pool.submit(_download, f"{url}/shared.bin", blocked)
            deadline = time.monotonic() + 10
            while len(origin.requests("/shared.bin")) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # A's probe is answered and its fills are out
            b = pool.submit(_download, f"{url}/shared.bin", {"x-user-id": "b"})
            status_b, got_b = b.result()
            a.result()
    assert status_b == 200 and got_b == body, "B's download broke on A's refusal"
    for sent in origin.requests("/shared.bin"):
        if sent.get("range", "bytes=0-").startswith("bytes=0-"):
            continue  # the probe is the client's own request
        leaked = [name for name in CLIENT_FIELDS if name in sent]
        assert not leaked, f"a shared fill carried a client's {leaked}"


def test_a_clients_headers_cannot_make_a_shared_fill_see_another_version() -> None:
    with tiny_setup(max_concurrent_subrequests=2) as (origin, url):
        body = origin.add("/versioned.bin", 6 * SLICE, [("cache-control", "public, max-age=600")])
        origin.delay["/versioned.bin"] = 0.2
        # An origin that tailors the representation to one header without saying Vary.
        origin.etag_for = lambda h, p: '"tailored"' if h.get("x-user-id") == "odd" else None
        # Stored (metadata and slice 0) by an ordinary client's small range.
        head = httpx.get(f"{url}/versioned.bin", headers={"range": "bytes=0-99"})
        assert head.status_code == 206 and head.content == body[:100]
        # The odd client's request fills the other slices.
        cached = httpx.get(f"{url}/versioned.bin", headers={"x-user-id": "odd"})
        assert cached.status_code == 200 and cached.content == body
        again = httpx.get(f"{url}/versioned.bin", headers={"cache-control": "only-if-cached"})
    assert again.status_code == 200, "one client's headers purged the object for everyone"


# --- item 11: no per-slice or per-entry scans on the event loop ---------------------------


class _CountingFront:
    """A store front that only answers index lookups, counting them."""

    def __init__(self) -> None:
        self.lookups = 0
        self.epoch = 0
        self.held_below = 0  # slices 0..held_below-1 are held (a download stopped half-way)

    def contains_slice(self, key: str) -> bool:
        self.lookups += 1
        return int(key.rsplit(" ", 1)[1]) < self.held_below


def test_x_cache_slices_of_a_huge_object_costs_a_bounded_number_of_lookups() -> None:
    from app.engine.budget import ByteBudget
    from app.engine.objectmeta import ObjectMeta
    from app.engine.slicer import SliceEngine

    front = _CountingFront()
    engine = SliceEngine(
        upstream=None,  # type: ignore[arg-type]  # never asked
        store=front,  # type: ignore[arg-type]
        slice_size=SLICE,
        lookahead=4,
        max_retries=0,
        budget=ByteBudget(MiB),
    )
    size = 4 * 1024 * MiB  # 65,536 slices
    meta = ObjectMeta(size, '"e"', None, [], 0.0, 0.0)
    front.held_below = size // SLICE // 2
    cached = engine.cached_slices("http://o/huge", meta, 0, size - 1)
    assert front.lookups <= 1024, f"{front.lookups} index lookups before the first byte"
    assert abs(cached - size // SLICE // 2) <= size // SLICE // 100
    front.held_below = 5
    small = engine.cached_slices("http://o/huge", meta, 0, 10 * SLICE - 1)
    assert small == 5, "a small range is counted exactly"


def test_invalidating_one_object_does_not_scan_every_l1_entry(monkeypatch: Any) -> None:
    import cache.indexed
    from cache import keys as cache_keys
    from cache.memory import MemoryStore

    async def scenario() -> tuple[int, int]:
        store = MemoryStore(1 << 30)
        for n in range(20_000):
            await store.put_slice(f"http://o/f{n} v 0", b"x", None)
        await store.put_meta("http://o/target", b"m", None)
        await store.put_slice("http://o/target v 0", b"x", None)
        await store.put_slice("http://o/target vary:1 v 0", b"x", None)
        calls = 0
        real = cache_keys.belongs_to

        def counting(key: str, object_key: str) -> bool:
            nonlocal calls
            calls += 1
            return real(key, object_key)

        monkeypatch.setattr(cache.indexed, "belongs_to", counting)
        removed = await store.delete("http://o/target")
        left = sum(1 for key in store.keys() if key.startswith("http://o/target"))
        assert left == 0
        return removed, calls

    removed, calls = asyncio.run(scenario())
    assert removed == 3
    assert calls <= 10, f"one object's invalidation looked at {calls} L1 entries"


# --- item 9: L2 write-behind slows fills down instead of dropping slices ------------------


def _write_behind(url: str) -> dict[str, float]:
    stats = httpx.get(f"{url}/_slicecache/stats").json()
    return stats["tiers"]["write_behind"]  # type: ignore[no-any-return]


def test_three_cold_downloads_with_l2_on_put_every_slice_in_l2(tmp_path: Path) -> None:
    slices_each = 52
    with tiny_setup(**_l2(tmp_path)) as (origin, url):
        bodies = {
            f"/cold-{n}.bin": origin.add(f"/cold-{n}.bin", slices_each * SLICE) for n in range(3)
        }
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            got = dict(
                zip(bodies, pool.map(lambda p: _download(f"{url}{p}", {}), bodies), strict=True)
            )
        for path, body in bodies.items():
            assert got[path] == (200, body), path
        deadline = time.monotonic() + 30
        while _write_behind(url)["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.05)
        figures = _write_behind(url)
        assert figures["write_behind_dropped"] == 0, f"L2 lost writes: {figures}"
        # Every slice (and each object's metadata) reached L2.
        assert figures["write_behind_written"] >= 3 * (slices_each + 1), figures


# --- item 5: a PURGE during the adoption of a probe's answer is never undone ---------------


class _GatedL2:
    """An L2 (a MemoryStore underneath) whose ``n``-th metadata read waits for a gate: the
    await in which a PURGE can slip between a probe's answer and its storing."""

    def __init__(self, block_on_call: int) -> None:
        from cache.memory import MemoryStore

        self.inner = MemoryStore(64 * MiB)
        self.name = "l2"
        self.calls = 0
        self.block_on_call = block_on_call
        self.blocked = asyncio.Event()
        self.gate = asyncio.Event()

    async def get_meta(self, key: str) -> bytes | None:
        self.calls += 1
        if self.calls == self.block_on_call:
            self.blocked.set()
            await self.gate.wait()
        return await self.inner.get_meta(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_purge_while_a_probe_answer_is_adopted_is_not_undone() -> None:
    from app.engine.budget import ByteBudget
    from app.engine.objects import ObjectDirectory, ObjectRequest, Opened
    from app.engine.slicer import SliceEngine
    from app.httpcache.freshness import FreshnessPolicy
    from app.upstream.client import UpstreamClient, UpstreamTimeouts, default_transport
    from cache import keys as cache_keys
    from cache.memory import MemoryStore
    from cache.tiered import TieredStore

    origin = TinyOrigin()
    origin.add("/purged.bin", 3 * SLICE, [("cache-control", "public, max-age=600")])

    async def scenario(origin_url: str) -> tuple[object, object, object, object]:
        l2 = _GatedL2(block_on_call=2)  # 1: the lookup; 2: the adoption
        store = TieredStore(MemoryStore(64 * MiB), l2)
        upstream = UpstreamClient(origin_url, UpstreamTimeouts(5, 5, None), default_transport(8))
        engine = SliceEngine(upstream, store, SLICE, 2, 0, ByteBudget(8 * MiB))
        directory = ObjectDirectory(engine, store, FreshnessPolicy())
        key = origin_url + "/purged.bin"
        host = origin_url.removeprefix("http://")
        request = ObjectRequest(key, "/purged.bin", [], [("host", host)])
        opening = asyncio.create_task(directory.open(request))
        await asyncio.wait_for(l2.blocked.wait(), 10)  # the answer is in, being adopted
        await directory.forget(key)  # the PURGE, answered 200 now
        l2.gate.set()
        opened = await asyncio.wait_for(opening, 10)
        assert isinstance(opened, Opened)
        if opened.first_fill is not None and opened.first_fill.task is not None:
            await asyncio.wait_for(asyncio.shield(opened.first_fill.task), 10)
        await store.flush()
        slice0 = cache_keys.slice_key(opened.entry_key, opened.meta.version, 0)
        found = (
            await directory.cached_meta(key),
            await store.get_meta(key),
            await store.get_slice(slice0),
            await l2.inner.get_meta(key),
        )
        await engine.close()
        await store.close()
        await upstream.aclose()
        return found

    with run_asgi_in_thread(origin) as origin_url:
        meta, stored_meta, slice0, l2_meta = asyncio.run(scenario(origin_url))
    assert meta is None, "the directory still knows the purged object"
    assert stored_meta is None and l2_meta is None, "metadata fetched before the PURGE stored"
    assert slice0 is None, "slice 0 fetched before the PURGE stored after it"


def test_a_stuck_l2_costs_counted_drops_logged_once_per_interval(
    monkeypatch: Any, caplog: Any
) -> None:
    import logging

    import cache.tiered
    from app.engine.pressure import PressureWatch
    from cache.memory import MemoryStore
    from cache.ratelimit import RateLimitedLog
    from cache.tiered import TieredStore

    class StuckL2(MemoryStore):
        name = "l2"

        async def put_slice(
            self,
            key: str,
            data: Any,
            expires_at: float | None,
            *,
            epoch: int | None = None,
            compressible: bool | None = None,
        ) -> bool:
            await asyncio.Event().wait()  # never returns
            return False

    monkeypatch.setattr(cache.tiered, "WRITE_BEHIND_WAIT_SECONDS", 0.05)

    async def scenario() -> dict[str, float]:
        store = TieredStore(MemoryStore(MiB), StuckL2(MiB), queue_size=1)
        # The store only counts; the app's pressure watch logs what moved, per interval.
        watch = PressureWatch(store, RateLimitedLog(logging.getLogger("slicecache"), 3600))
        for n in range(10):
            await store.put_slice(f"http://o/s v {n}", b"x", None)
            watch.check()
        figures = store.stats()
        assert store._writer is not None
        store._writer.cancel()  # close() would wait for the stuck write
        return figures

    with caplog.at_level(logging.WARNING):
        figures = asyncio.run(scenario())
    # Two slices are being written (the first, and the one queued before the writer took
    # it: one batch), one waits in the queue; the rest could not be queued.
    assert figures["tiered_write_behind_dropped"] == 7
    drops = [r for r in caplog.records if "write-behind queue full" in r.getMessage()]
    assert len(drops) == 1, "a drop storm must log once per interval"


def test_writes_waiting_for_room_land_even_if_their_fills_are_cancelled() -> None:
    """At shutdown the engine cancels its fills; one whose slice is complete may be waiting
    for room in the write-behind queue. Its write still reaches L2 (helper-69: 20-30 of 300
    slices were lost on a clean SIGTERM, uncounted)."""
    from cache.memory import MemoryStore
    from cache.tiered import TieredStore

    class SlowL2(MemoryStore):
        name = "l2"

        def __init__(self) -> None:
            super().__init__(MiB)
            self.gate = asyncio.Event()
            self.written: list[str] = []

        async def put_slice(
            self,
            key: str,
            data: Any,
            expires_at: float | None,
            *,
            epoch: int | None = None,
            compressible: bool | None = None,
        ) -> bool:
            await self.gate.wait()
            self.written.append(key)
            return True

    async def scenario() -> tuple[list[str], dict[str, int]]:
        l2 = SlowL2()
        store = TieredStore(MemoryStore(MiB), l2, queue_size=1)
        fills = [
            asyncio.create_task(store.put_slice(f"http://o/s v {n}", b"x", None, epoch=0))
            for n in range(6)
        ]
        for _ in range(5):
            await asyncio.sleep(0)  # one write taken, one queued, four wait for room
        for fill in fills:
            fill.cancel()  # as the engine's close() does
        await asyncio.gather(*fills, return_exceptions=True)
        l2.gate.set()
        await store.close()
        return sorted(l2.written), dict(store.counters)

    keys, counters = asyncio.run(scenario())
    assert keys == [f"http://o/s v {n}" for n in range(6)], "a cancelled fill lost its write"
    assert counters["write_behind_written"] == 6
    assert counters["write_behind_dropped"] == 0


def test_a_revalidation_by_a_client_with_credentials_keeps_the_shared_copy() -> None:
    # Only what the 304 says about the response decides; this client's Authorization
    # (or its own no-store) concerns its request, not the stored response.
    with tiny_setup() as (origin, url):
        body = origin.add("/stays.bin", 3 * SLICE, [("cache-control", "max-age=0")])
        assert httpx.get(f"{url}/stays.bin").content == body
        origin.not_modified["/stays.bin"] = [("cache-control", "max-age=600")]
        revalidated = httpx.get(f"{url}/stays.bin", headers={"authorization": "Bearer x"})
        assert revalidated.status_code == 200 and revalidated.content == body
        after = httpx.get(f"{url}/stays.bin", headers={"cache-control": "only-if-cached"})
    assert after.status_code == 200, "a client's credentials dropped the shared copy"


def test_shared_fill_headers_keep_the_host_and_the_vary_fields_only() -> None:
    from app.edge.headers import shared_fill_headers

    sent = [
        ("host", "origin:80"),
        ("cookie", "a=1"),
        ("authorization", "Bearer a"),
        ("accept-language", "fr"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("user-agent", "curl"),
        ("via", "1.1 client-proxy, 1.1 slicecache"),
    ]
    assert shared_fill_headers(sent, ["Accept-Language"]) == [
        ("host", "origin:80"),
        ("accept-language", "fr"),
        ("x-forwarded-proto", "https"),
        ("via", "1.1 slicecache"),
    ]
