"""Issue 11, the engine under pressure: budgets, held bytes, splices, stalls (real servers)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import cast

import httpx
import pytest

from app.engine.budget import ByteBudget, FetchHold
from app.engine.objectmeta import ObjectMeta
from app.engine.slicer import SliceEngine
from app.upstream.client import UpstreamClient
from tests.conftest import Origin, ProxyFactory
from tests.servers import run_asgi_in_thread

KiB = 1024
MiB = 1024 * KiB
SLICE = 64 * KiB


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/_slicecache/metrics").text.splitlines():
        if line.startswith(f"slicecache_{name} ") or line.startswith(f"slicecache_{name}{{"):
            return float(line.split()[-1])
    raise AssertionError(f"no slicecache_{name} in /metrics")


def _settle(url: str, name: str, seconds: float = 15.0) -> float:
    """Poll a gauge until it reads 0 or the (generous) deadline passes."""
    deadline = time.monotonic() + seconds
    while (value := _metric(url, name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


async def _cold_round(url: str, tag: str, count: int) -> list[int | str]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(i: int) -> int | str:
            try:
                response = await client.get(f"{url}/files/256k-{tag}-{i}.bin")
            except httpx.HTTPError as error:
                return type(error).__name__
            if response.status_code == 200 and len(response.content) != 256 * KiB:
                return "short"
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_budget_returns_to_zero_after_concurrent_cold_gets_under_pressure(
    proxy: ProxyFactory,
) -> None:
    # The issue's repro: a probe's slice-0 fill cancelled (under budget pressure) before its
    # first step never released its prepaid grant nor closed the probe's origin response.
    settings = {"slice_size": SLICE, "max_in_flight_bytes": MiB}
    with proxy(**settings) as url:
        for round_ in range(2):
            statuses = asyncio.run(_cold_round(url, f"leak{round_}", 144))
            assert statuses.count(200) == len(statuses), statuses
            assert _settle(url, "in_flight_bytes") == 0, f"round {round_}: budget leaked"
            assert _settle(url, "slices_filling") == 0, f"round {round_}: fills left"
        # An idle proxy serves a cold object whole.
        last = httpx.get(f"{url}/files/1m-after-leak.bin", timeout=30)
        assert last.status_code == 200 and len(last.content) == MiB


@pytest.mark.parametrize("asked", ["bytes=100000-", None])
def test_a_stalled_slice_cuts_the_client_off_before_every_retry_has_timed_out(
    proxy: ProxyFactory, origin: Origin, asked: str | None
) -> None:
    """The origin sends headers, then nothing. Each attempt costs READ_TIMEOUT; without a
    bound on the whole wait, the client waited (1 + MAX_RETRIES) of them. Measured in
    origin attempts, not seconds: the client is answered while retries remain. A range
    whose first slice is not slice 0 waits for that slice before its head: a 504. From
    slice 0 on, the head went out with the origin's (as nginx's does), so the client is
    cut off instead (a body shorter than its Content-Length)."""
    name = f"300k-stalled-slice-{'ranged' if asked else 'whole'}.bin"
    origin.app.set_fault(name, "hang")
    retries = 6
    settings = {
        "slice_size": SLICE,
        "read_timeout": 1.0,
        "max_retries": retries,
        "slice_wait_timeout": 1.0,
    }
    headers = {"range": asked} if asked else {}
    try:
        with proxy(**settings) as url:
            if asked:
                response = httpx.get(f"{url}/files/{name}", headers=headers, timeout=60)
                assert response.status_code == 504, response.status_code
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    httpx.get(f"{url}/files/{name}", timeout=60)
            attempts = len(origin.requests_for(f"/files/{name}"))
    finally:
        origin.app.set_fault(name, "")
    assert attempts < 1 + retries, f"the client waited through {attempts} origin attempts"


# --- objects without a strong validator ------------------------------------------------------


class FlippingOrigin:
    """An origin whose one object changes after its first answer was cut mid-body.

    Version 1 is served to the first request, which the origin closes after ``cut`` bytes;
    every later request gets version 2: same size, same validators (none, or a
    Last-Modified equal to the response's Date, i.e. weak: RFC 9110 8.8.2.2).
    """

    def __init__(self, size: int, cut: int, last_modified: str | None) -> None:
        self.size = size
        self.cut = cut
        self.last_modified = last_modified
        self.requests = 0
        self.versions = [bytes((i * 7 + v * 131) % 251 for i in range(size)) for v in (1, 2)]

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        self.requests += 1
        body = self.versions[0 if self.requests == 1 else 1]
        headers = [(b"content-type", b"application/octet-stream"), (b"accept-ranges", b"bytes")]
        if self.last_modified is not None:
            headers += [(b"last-modified", self.last_modified.encode())]
            headers += [(b"date", self.last_modified.encode())]
        request_headers = dict(scope["headers"])
        first, last = 0, self.size - 1
        status = 200
        if b"range" in request_headers:
            spec = request_headers[b"range"].decode().split("=", 1)[1]
            lo, _, hi = spec.partition("-")
            first, last = int(lo), min(int(hi) if hi else self.size - 1, self.size - 1)
            status = 206
            headers.append((b"content-range", f"bytes {first}-{last}/{self.size}".encode()))
        headers.append((b"content-length", str(last - first + 1).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        chunk = body[first : last + 1]
        if self.requests == 1:
            await send({"type": "http.response.body", "body": chunk[: self.cut], "more_body": True})  # type: ignore[operator]
            return  # uvicorn closes the connection: a body shorter than announced
        await send({"type": "http.response.body", "body": chunk})  # type: ignore[operator]


def _get_whole_or_aborted(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=30)
    except httpx.HTTPError:
        return None  # visibly aborted: acceptable


def test_an_object_without_validators_is_never_spliced_across_a_retry(
    proxy: ProxyFactory,
) -> None:
    flipping = FlippingOrigin(800_000, 200_000, None)
    with run_asgi_in_thread(flipping) as origin_url:
        with proxy(upstream_address=origin_url) as url:
            first = _get_whole_or_aborted(f"{url}/object.bin")
            second = _get_whole_or_aborted(f"{url}/object.bin")
    # The origin no longer changes after the first request: the second one gets a whole
    # object, so the splice check below runs at least once (an abort alone proves nothing).
    assert second is not None and second.status_code == 200
    for response in (first, second):
        if response is not None and response.status_code == 200:
            assert response.content in flipping.versions, "two versions spliced into one body"


def test_a_same_second_last_modified_does_not_pin_a_version(proxy: ProxyFactory) -> None:
    # Last-Modified equal to Date: the origin may change the object again within that
    # second, same size, same date. Slices fetched by separate requests must not be joined.
    stamp = formatdate(time.time() - 5, usegmt=True)
    flipping = FlippingOrigin(4 * SLICE, 3 * SLICE, stamp)
    with run_asgi_in_thread(flipping, date_header=False) as origin_url:
        with proxy(upstream_address=origin_url, slice_size=SLICE) as url:
            first = _get_whole_or_aborted(f"{url}/object.bin")
            second = _get_whole_or_aborted(f"{url}/object.bin")
    # The origin no longer changes after the first request: the second one gets a whole
    # object, so the splice check below runs at least once (an abort alone proves nothing).
    assert second is not None and second.status_code == 200
    for response in (first, second):
        if response is not None and response.status_code == 200:
            assert response.content in flipping.versions, "two versions spliced into one body"


class RangeForgettingOrigin:
    """Honours the first Range request of its object, then answers every one with a 200."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.body = bytes((i * 13 + 5) % 251 for i in range(size))
        self.requests = 0

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        self.requests += 1
        headers = [(b"etag", b'"forgetful-1"'), (b"content-type", b"application/octet-stream")]
        request_headers = dict(scope["headers"])
        first, last, status = 0, self.size - 1, 200
        if b"range" in request_headers and self.requests == 1:
            spec = request_headers[b"range"].decode().split("=", 1)[1]
            lo, _, hi = spec.partition("-")
            first, last = int(lo), min(int(hi), self.size - 1)
            status = 206
            headers.append((b"content-range", f"bytes {first}-{last}/{self.size}".encode()))
        headers.append((b"content-length", str(last - first + 1).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": self.body[first : last + 1]})  # type: ignore[operator]


def test_an_origin_that_stops_honouring_ranges_does_not_break_downloads(
    proxy: ProxyFactory,
) -> None:
    forgetful = RangeForgettingOrigin(10 * SLICE + 123)
    with run_asgi_in_thread(forgetful) as origin_url:
        with proxy(upstream_address=origin_url, slice_size=SLICE) as url:
            first = httpx.get(f"{url}/object.bin", timeout=30)
            second = httpx.get(f"{url}/object.bin", timeout=30)
            ranged = httpx.get(f"{url}/object.bin", headers={"range": "bytes=70000-"})
    assert first.status_code == 200 and first.content == forgetful.body
    assert second.status_code == 200 and second.content == forgetful.body
    assert ranged.status_code in (200, 206)
    expected = forgetful.body if ranged.status_code == 200 else forgetful.body[70000:]
    assert ranged.content == expected


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_clients_that_read_nothing_hold_no_more_than_the_budget(proxy: ProxyFactory) -> None:
    # Each response read ahead 16 slices, and a completed slice waiting for a client that
    # does not read was counted nowhere: 20 idle clients held ~20 x 16 MiB, with 0 bytes
    # "in flight". Bytes held for a client now count against the budget until sent.
    # (The proxy and origin run in this process: its RSS is theirs.)
    clients, budget = 20, 16 * MiB
    settings = {"slice_size": MiB, "max_in_flight_bytes": budget, "l1_cache_size_bytes": 0}
    with proxy(**settings) as url:
        httpx.get(f"{url}/files/1m-warm.bin")  # allocator and pools warmed up
        before = _rss()
        host, port = url.removeprefix("http://").split(":")
        sockets = []
        try:
            for i in range(clients):
                path = f"/files/200m-idle-reader-{i}.bin"
                conn = socket.create_connection((host, int(port)), timeout=10)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
                conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                sockets.append(conn)
            # Settled: the proxy's origin traffic stops growing.
            deadline, last, still = time.monotonic() + 60, -1, 0
            while time.monotonic() < deadline and still < 10:
                fetched = httpx.get(f"{url}/_slicecache/stats").json()["upstream"]["bytes"]
                still = still + 1 if fetched == last else 0
                last = fetched
                time.sleep(0.1)
            grown = _rss() - before
            in_flight = _metric(url, "in_flight_bytes")
        finally:
            for conn in sockets:
                conn.close()
        assert _settle(url, "in_flight_bytes") == 0
    # The README's per-connection term (2 x SLICE_SIZE + 256 KiB: the probe's slice 0, the
    # slice being sent, socket buffers) plus, since the origin and this client run in this
    # process too, their 20 streams' buffers and allocator slack: 4 MiB a client (measured
    # 57-79 MiB in all for 20; the defect held ~19 MiB a client, +398 MiB). The proxy's own
    # figure is checked against the formula by `make soak`, where it runs alone.
    per_connection = 4 * MiB
    assert in_flight <= budget
    assert grown <= budget + clients * per_connection, f"RSS grew {grown / MiB:.0f} MiB"


async def test_a_fill_cancelled_before_its_first_step_releases_grant_and_response() -> None:
    # _stop_unread_fills cancelled the probe's slice-0 fill before its task first ran: its
    # ``finally`` never ran, so the prepaid grant and the probe's response stayed held.
    budget = ByteBudget(MiB)
    await budget.acquire(SLICE)  # the probe's prepaid grant
    closed = asyncio.Event()

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b""

        async def aclose(self) -> None:
            closed.set()

    engine = SliceEngine(
        upstream=cast(UpstreamClient, None),
        store=None,
        slice_size=SLICE,
        lookahead=1,
        max_retries=0,
        budget=budget,
    )
    meta = ObjectMeta(SLICE, '"v1"', None, [], 0.0, 0.0)
    response = httpx.Response(206, stream=Body())
    hold = FetchHold(budget, SLICE, response)  # the grant and the answer, as a probe has
    fill = engine.start_fill("k", (0, SLICE - 1), "/x", meta, [], store=False, hold=hold)
    assert fill.task is not None
    fill.task.cancel()  # before its first step
    await asyncio.wait_for(closed.wait(), 10)
    assert budget.in_use == 0
    assert not engine.fills
