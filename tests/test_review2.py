"""Second review (of 6609c24): each test shows a defect, or guards a risky path checked sound."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import httpx
import pytest

from app.main import create_app
from cache import keys, tiered
from cache.memory import MemoryStore
from cache.tiered import PURGE_RECORDS, TieredStore
from settings import Settings
from tests.conftest import Origin, ProxyFactory
from tests.servers import run_asgi_in_thread
from tests.waiting import wait_for, wait_until_held

MiB = 1024 * 1024
SLICE = 64 * 1024
TOKEN = "review2-token"


def _bytes_in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/_slicecache/metrics").text.splitlines():
        if line.startswith("slicecache_in_flight_bytes"):
            return float(line.split()[-1])
    raise AssertionError("no slicecache_in_flight_bytes in /metrics")


def _wait_for_no_bytes_in_flight(url: str, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while (in_flight := _bytes_in_flight(url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return in_flight


def _origin_saw(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.json()["headers"]}


# --- defects -------------------------------------------------------------------------------


def test_a_finished_small_range_does_not_starve_other_clients_of_budget(
    proxy: ProxyFactory,
) -> None:
    # A client takes 100 bytes of a cold slice and is gone in milliseconds. Its fill now
    # runs on to cache the slice, at the origin's pace (1 MiB at 50 kB/s: ~20 s), holding
    # the slice's byte budget the whole time. Every cold request behind it waits in the
    # probe's budget queue, without any bound, for a download nobody is waiting for.
    settings = {
        "slice_size": MiB,
        "max_in_flight_bytes": MiB,
        "slices_per_subrequest": 1,
        "max_concurrent_subrequests": 1,
    }
    with proxy(**settings) as url:
        small = httpx.get(
            f"{url}/files/4m-review2-orphan.bin?bandwidth_mbps=0.05",
            headers={"range": "bytes=0-99"},
            timeout=5,
        )
        assert small.status_code == 206 and len(small.content) == 100
        try:
            # The orphan fill would hold the budget ~20 s; 10 s tells the two apart on a
            # loaded machine, where a cold 100 kB fetch still takes well under a second.
            other = httpx.get(f"{url}/files/100k-review2-bystander.bin", timeout=10)
        except httpx.TimeoutException:
            raise AssertionError(
                "an unrelated cold request waited for the budget of a finished response's "
                f"orphan fill ({_bytes_in_flight(url):.0f} B still in flight)"
            ) from None
    assert other.status_code == 200


def test_unrelated_invalidations_during_a_probe_do_not_make_it_private(
    proxy: ProxyFactory, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every successful POST invalidates its URI (RFC 9111 4.4), i.e. records a purge. Only
    # the last PURGE_RECORDS are kept, and an operation older than all of them counts as
    # purged: ordinary write traffic (~500 POSTs/s) turns a cold object's probe answer
    # into a private, unstored, uncoalesced one although nothing about it was purged.
    # The proxy runs in this process: 20 kept records instead of 1,024 make the same case
    # with 25 POSTs instead of 1,029 (the object-purge records keep their real bound).
    monkeypatch.setattr(tiered, "PURGE_RECORDS", 20)
    path = "/files/60000-review2-busy.bin"
    target = f"{path}?hold=review2-busy"  # the origin answers the probe when released
    with proxy(slice_size=SLICE) as url:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            download = pool.submit(httpx.get, f"{url}{target}", timeout=60)
            wait_until_held(origin.app, "review2-busy")  # the probe is out
            with httpx.Client(timeout=5) as client:
                for n in range(tiered.PURGE_RECORDS + 5):
                    assert client.post(f"{url}/echo/review2-api-{n}", content=b"x").is_success
            assert not download.done()  # held: cannot have finished, however slow the POSTs
            origin.app.release("review2-busy")
            first = download.result()
        again = httpx.get(f"{url}{target}", headers={"cache-control": "only-if-cached"})
    assert first.status_code == 200
    assert "purged" not in first.headers["cache-status"], first.headers["cache-status"]
    assert again.status_code == 200, "the object was not stored"


def test_the_clients_host_is_not_an_unkeyed_input_of_stored_responses(
    proxy: ProxyFactory,
) -> None:
    # preserve_host is off: the cache key ignores the client's Host. The probe now sends
    # the client's Host as X-Forwarded-Host, which frameworks behind a proxy use to build
    # absolute URLs (redirects, links): the answer made for evil.example is stored under
    # the origin's key and served to everyone (the Host poisoning of the first review,
    # moved into another header).
    path = "/echo/review2-xfh"
    # cache_ttl: /echo says nothing about freshness; the victim must be able to get a hit.
    with proxy(slice_size=SLICE, cache_ttl=3600) as url:
        attacker = httpx.get(f"{url}{path}", headers={"host": "evil.example"})
        victim = httpx.get(f"{url}{path}")
    assert attacker.status_code == victim.status_code == 200
    assert _origin_saw(victim).get("x-forwarded-host") != "evil.example"


def test_responses_uvicorn_writes_itself_carry_a_date(proxy: ProxyFactory) -> None:
    # uvicorn's Date is turned off (the app relays the origin's), so the answers uvicorn
    # makes on its own (400 for a malformed request, 500/503) have none: RFC 9110 6.6.1
    # requires Date on every 2xx-4xx response of a server with a clock.
    with proxy() as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: zz\r\n\r\n")
            head = conn.recv(65536).split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 400"), head
    assert b"\r\ndate: " in head, head


# --- guards: risky paths checked and found sound ---------------------------------------


def test_guard_an_orphan_fill_of_a_stalled_origin_ends_at_the_read_timeout(
    proxy: ProxyFactory,
) -> None:
    # The client got its 100 bytes; the origin then stays silent (16 KiB bursts at 10 kB/s).
    # The fill that outlives the reader is bounded by the read timeout and the retries,
    # and gives its budget back.
    settings = {"slice_size": MiB, "read_timeout": 0.5, "max_retries": 0}
    with proxy(**settings) as url:
        small = httpx.get(
            f"{url}/files/2m-review2-stall.bin?bandwidth_mbps=0.01",
            headers={"range": "bytes=0-99"},
            timeout=5,
        )
        assert small.status_code == 206 and len(small.content) == 100
        assert _wait_for_no_bytes_in_flight(url, 30.0) == 0


def test_guard_budget_returns_to_zero_on_every_probe_outcome(
    proxy: ProxyFactory, origin: Origin
) -> None:
    with proxy(slice_size=SLICE, max_in_flight_bytes=MiB) as url:
        stored = "/files/300000-review2-budget.bin"
        assert httpx.get(f"{url}{stored}").status_code == 200
        # 304 revalidation, a changed object (200 to the conditional probe), HEAD.
        assert httpx.get(f"{url}{stored}", headers={"cache-control": "no-cache"}).is_success
        origin.app.bump("300000-review2-budget.bin")
        assert httpx.get(f"{url}{stored}", headers={"cache-control": "no-cache"}).is_success
        assert httpx.head(f"{url}/files/300000-review2-budget-head.bin").status_code == 200
        # Forward with a relayed answer (5xx, no Range support), an empty object.
        assert httpx.get(f"{url}/files/300000-review2-b5.bin?fault=status500").status_code == 500
        assert httpx.get(f"{url}/files/300000-review2-b6.bin?fault=norange").status_code == 200
        assert httpx.get(f"{url}/files/0-review2-empty.bin").status_code == 200
        # Private multipart in one cold slice (its fill is stopped and started again).
        private = httpx.get(
            f"{url}/files/300000-review2-b7.bin?cc=private",
            headers={"range": "bytes=0-9,500-509"},
        )
        assert private.status_code == 206
        # A client that gives up while the probe is out, and one that leaves mid-body.
        try:
            httpx.get(f"{url}/files/300000-review2-b8.bin?latency_ms=500", timeout=0.1)
        except httpx.TimeoutException:
            pass
        with httpx.stream("GET", f"{url}/files/4m-review2-b9.bin?bandwidth_mbps=1") as r:
            next(r.iter_raw())
        assert _wait_for_no_bytes_in_flight(url, 30.0) == 0


def test_guard_exactly_one_date_on_every_response_path(proxy: ProxyFactory) -> None:
    with proxy(slice_size=SLICE, purge={"enabled": True, "auth_token": TOKEN}) as url:
        target = "/files/300000-review2-date.bin"
        miss = httpx.get(f"{url}{target}")
        responses = {
            "miss": miss,
            "hit": httpx.get(f"{url}{target}"),
            "head": httpx.head(f"{url}{target}"),
            "304": httpx.get(f"{url}{target}", headers={"if-none-match": miss.headers["etag"]}),
            "416": httpx.get(f"{url}{target}", headers={"range": "bytes=999999-"}),
            "relay": httpx.get(f"{url}/files/300000-review2-d1.bin?fault=status500"),
            "pass-through": httpx.post(f"{url}/echo/review2-date", content=b"x"),
            "admin": httpx.get(f"{url}/_slicecache/stats"),
            "purge": httpx.request(
                "PURGE", f"{url}{target}", headers={"authorization": f"Bearer {TOKEN}"}
            ),
        }
    with proxy(slice_size=SLICE, upstream_address="http://127.0.0.1:9") as url:
        responses["502"] = httpx.get(f"{url}{target}")
    for name, response in responses.items():
        assert len(response.headers.get_list("date")) == 1, (name, response.headers)
    # A replayed response keeps the origin's Date, and Age says how old it is.
    assert responses["hit"].headers["date"] == miss.headers["date"]


def test_guard_probe_and_slices_send_origin_side_headers(proxy: ProxyFactory) -> None:
    with proxy(slice_size=SLICE, preserve_host=True) as url:
        seen = _origin_saw(
            httpx.get(
                f"{url}/echo/review2-headers",
                headers={"host": "site.example", "x-forwarded-for": "203.0.113.7"},
            )
        )
    assert seen["host"] == "site.example"  # preserve_host: the key has it too
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"  # the real peer appended
    assert seen["range"] == f"bytes=0-{SLICE - 1}" and seen["accept-encoding"] == "identity"


async def test_guard_purge_records_boundary() -> None:
    store = TieredStore(MemoryStore(MiB), None)
    key = keys.slice_key("http://o:80/kept.bin", "v1", 0)
    start = store.epoch
    for n in range(PURGE_RECORDS):
        await store.delete_prefix(f"http://o:80/other-{n}/")
    assert not store.purged_since(start, key)  # every purge since then is still known
    await store.delete_prefix("http://o:80/one-more/")
    assert store.purged_since(start, key)  # one forgotten: conservatively "purged"
    assert not store.purged_since(start + 1, key)
    assert not store.purged_since(store.epoch, key)
    await store.close()


def test_guard_streaming_counts_and_recent_slices_are_dropped_after_every_response(
    origin: Origin,
) -> None:
    # Built by hand (as the proxy fixture does) to look at the engine afterwards. The
    # object is too large to store (1 MiB L1), so its slices go through ``recent``.
    settings = Settings(
        upstream_address=origin.url,
        slice_size=SLICE,
        l1_cache_size_bytes=MiB,
        max_concurrent_subrequests=2,
        slices_per_subrequest=2,
    )
    app = create_app(settings, configure_logs=False)
    path = "/files/4m-review2-streaming.bin"
    target = f"{path}?bandwidth_mbps=2"
    with run_asgi_in_thread(app, proxy_headers=False, date_header=False) as url:
        engine = app.state.runtime.directory.engine
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            whole = pool.submit(httpx.get, f"{url}{target}", timeout=30)
            # The first download is under way: its fills have reached the origin.
            wait_for(lambda: len(origin.requests_for(path)) >= 2, "the first download's fills")
            behind = pool.submit(httpx.get, f"{url}{target}", timeout=10)
            parts = pool.submit(
                httpx.get, f"{url}{target}", headers={"range": "bytes=0-9,3000000-3000009"}
            )
            with httpx.stream("GET", f"{url}{target}", timeout=10) as gone:
                next(gone.iter_raw())  # and leaves mid-body
            assert whole.result().status_code == behind.result().status_code == 200
            assert parts.result().status_code == 206
        # Every response is done: the maps let go of them (the last ones a moment later).
        wait_for(lambda: engine.streaming == {} and len(engine.recent) == 0, "maps emptied")


def _active_requests(url: str) -> float:
    for line in httpx.get(f"{url}/_slicecache/metrics").text.splitlines():
        if line.startswith("slicecache_active_requests"):
            return float(line.split()[-1])
    raise AssertionError("no slicecache_active_requests in /metrics")


def test_guard_only_the_fetching_request_gets_the_origins_set_cookie(
    proxy: ProxyFactory, origin: Origin
) -> None:
    # The origin holds the probe until released: the first request is the fetcher and the
    # second arrives while it is out, however slow the machine (a sleep decided this).
    target = "/files/300000-review2-cookie.bin?hold=review2-cookie&setcookie=session%3Dabc"
    with proxy(slice_size=SLICE) as url:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.get, f"{url}{target}", timeout=30)
            wait_until_held(origin.app, "review2-cookie")  # the first one's probe is out
            second = pool.submit(httpx.get, f"{url}{target}", timeout=30)
            wait_for(lambda: _active_requests(url) >= 2, "the second request arrived")
            origin.app.release("review2-cookie")
            answers = [first.result(), second.result()]
        probes = [
            e
            for e in origin.requests_for("/files/300000-review2-cookie.bin")
            if (e["range"] or "bytes=0-").startswith("bytes=0-")
        ]
        assert len(probes) == 1, "the second request did not share the first one's probe"
        third = httpx.get(f"{url}{target}")
    assert [r.status_code for r in answers] == [200, 200]
    cookies = [r.headers.get_list("set-cookie") for r in [*answers, third]]
    assert cookies[0] == ["session=abc"] and cookies[1:] == [[], []], cookies
