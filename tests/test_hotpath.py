"""The hit path's prepared blocks (issue 16) equal what parsing from scratch gives.

A stored response's freshness and replayed header block are prepared once
(``ObjectMeta.freshness`` / ``ObjectMeta.replay``) and reused by every hit: reused across
requests and instants, they must answer exactly what a fresh parse answers, and be rebuilt
when the stored response changes (a 304 merges new headers, ``_withheld`` drops fields).
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from app.edge.httpserver import HttpProtocol
from app.engine.objectmeta import ObjectMeta
from app.engine.sliced import replay_headers, response_headers
from app.httpcache.cache_status import CacheStatus, append_cache_status, kept_upstream_members
from app.httpcache.freshness import FreshnessPolicy, StoredResponseInfo, decide, decide_prepared
from app.main import SlicecacheApp, create_app
from app.ops.accesslog import AccessLogMiddleware, access_line, new_request_id
from app.ops.metrics import Metrics
from settings import Settings
from tests.conftest import Origin, ProxyFactory
from tests.servers import run_asgi_in_thread
from tests.test_httpcache_properties import (
    _POLICY,
    _REQUEST_HEADERS,
    _RESPONSE_HEADERS,
    _STATUS,
    T0,
)

# Every proxy test runs with the protocol's fast path for plain fresh hits and without
# it (tests/conftest.py, app/fasthit.py): both paths answer the same tests.
BOTH_PATHS = True

H = list[tuple[str, str]]

_EXTRA = st.lists(
    st.tuples(
        st.sampled_from(["via", "cache-status", "server", "content-type", "etag", "x-a"]),
        st.sampled_from(["1.1 up", "up; hit; ttl=3", "nginx", "text/plain", '"e1"', "v"]),
    ),
    max_size=4,
)


def _meta(
    headers: H, status: int = 200, request_time: float = T0, delay: float = 0.5
) -> ObjectMeta:
    return ObjectMeta(
        size=4096,
        etag='"e1"',
        last_modified=None,
        headers=headers,
        request_time=request_time,
        response_time=request_time + delay,
        status=status,
    )


def _slow_headers(meta: ObjectMeta, status: CacheStatus, now: float) -> H:
    """What ``_answer`` built before the block was prepared (the reference)."""
    headers = replay_headers(meta, now)
    value = append_cache_status(
        kept_upstream_members(v for k, v in meta.headers if k == "cache-status"),
        status.header_value(),
    )
    headers = [(k, v) for k, v in headers if k != "cache-status"]
    headers.append(("cache-status", value))
    return headers


@settings(max_examples=200)
@given(
    _RESPONSE_HEADERS,
    _STATUS,
    _POLICY,
    st.lists(st.tuples(_REQUEST_HEADERS, st.floats(0, 10**6)), min_size=1, max_size=4),
)
def test_prepared_freshness_decides_as_a_fresh_parse(
    headers: H, status: int, policy: FreshnessPolicy, requests: list[tuple[H, float]]
) -> None:
    meta = _meta(headers, status)
    for request_headers, later in requests:
        now = T0 + later
        info = StoredResponseInfo(status, headers, meta.request_time, meta.response_time)
        expected = decide(info, request_headers, now, policy=policy)
        assert decide_prepared(meta.freshness(policy), request_headers, now) == expected


@settings(max_examples=200)
@given(_RESPONSE_HEADERS, _EXTRA, st.lists(st.floats(0, 10**6), min_size=1, max_size=3))
def test_prepared_header_block_equals_the_slow_path(
    headers: H, extra: H, laters: list[float]
) -> None:
    meta = _meta(headers + extra)
    for later in laters:
        for status in (CacheStatus.fresh_hit(30, None), CacheStatus.stale_hit(-3, "stale")):
            now = T0 + later
            assert response_headers(meta, status, now) == _slow_headers(meta, status, now)


def test_prepared_blocks_follow_a_changed_stored_response() -> None:
    policy = FreshnessPolicy()
    meta = _meta([("cache-control", "max-age=60"), ("x-a", "1"), ("set-me", "x")])
    status = CacheStatus.fresh_hit(60, None)
    first = response_headers(meta, status, T0 + 1)
    assert decide_prepared(meta.freshness(policy), [], T0 + 1).lifetime.seconds == 60
    # _withheld replaces the list; a revalidation moves the exchange times.
    meta.headers = [("cache-control", "max-age=5")]
    meta.request_time = meta.response_time = T0 + 100
    now = T0 + 101
    assert decide_prepared(meta.freshness(policy), [], now).lifetime.seconds == 5
    assert response_headers(meta, status, now) == _slow_headers(meta, status, now)
    assert response_headers(meta, status, now) != first
    # A policy of its own is prepared for on its own.
    other = FreshnessPolicy(shared=False)
    assert meta.freshness(other).policy is other


def test_prepared_blocks_are_not_stored() -> None:
    meta = _meta([("cache-control", "max-age=60")])
    meta.freshness(FreshnessPolicy())
    meta.replay()
    again = ObjectMeta.from_bytes(meta.to_bytes())
    assert again == meta
    assert b"_freshness" not in meta.to_bytes() and b"_replay" not in meta.to_bytes()


def test_a_prepared_header_block_is_left_out_of_the_cycle_collector() -> None:
    """Every cached object's metadata keeps one block (thousands of them), and CPython's
    full collections walk every tracked list on the event loop. As tuples of strings they
    are untracked: with 40k objects requested a full collection took 6.4-11.9 ms against
    13.4-20.3 ms with lists (interleaved runs, best of 7 each)."""
    import gc

    meta = _meta([("cache-control", "max-age=60"), ("cache-status", "up; hit"), ("x-a", "1")])
    block = meta.replay()
    # A tuple is untracked once a collection finds its items untracked: its inner
    # tuples may be found after it in the first one.
    gc.collect()
    gc.collect()
    assert not gc.is_tracked(block.fields)
    assert not gc.is_tracked(block.upstream_cache_status)
    assert ("x-a", "1") in block.fields and block.upstream_cache_status == ("up; hit",)


# --- the proxy's own dispatch (SlicecacheApp.proxy) and the Starlette stack ----------------


def _hit_headers(url: str, path: str, extra: dict[str, str]) -> httpx.Response:
    with httpx.Client() as client:
        client.get(url + path, headers=extra)  # stored
        return client.get(url + path, headers=extra)


def test_proxied_request_answers_the_same_through_either_dispatch(origin: Origin) -> None:
    """A hit through the thin dispatch equals the same hit through Starlette's stack."""
    stream = io.StringIO()
    app = create_app(Settings(upstream_address=origin.url), configure_logs=False)
    assert isinstance(app, SlicecacheApp) and app.proxy is not None
    fast_calls = []
    proxy = app.proxy

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        fast_calls.append(scope["raw_path"])
        await proxy(scope, receive, send)

    app.proxy = counted

    async def either(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (b"x-test-dispatch", b"stack") in scope["headers"]:
            # Without raw_path the request takes Starlette's whole stack.
            scope = {k: v for k, v in scope.items() if k != "raw_path"}
        await app(scope, receive, send)

    real_stdout = sys.stdout
    sys.stdout = stream
    try:
        with run_asgi_in_thread(
            either, proxy_headers=False, date_header=False, http=HttpProtocol
        ) as url:
            fast = _hit_headers(url, "/files/4k", {"x-test-dispatch": "fast"})
            assert fast_calls == [b"/files/4k", b"/files/4k"]
            stack = _hit_headers(url, "/files/4k", {"x-test-dispatch": "stack"})
            assert len(fast_calls) == 2
            metrics = httpx.get(url + "/_slicecache/metrics").text
    finally:
        sys.stdout = real_stdout
    assert fast.status_code == stack.status_code == 200
    assert fast.content == stack.content
    varying = {"date", "age", "x-request-id", "cache-status"}
    assert [(k, v) for k, v in fast.headers.items() if k not in varying] == [
        (k, v) for k, v in stack.headers.items() if k not in varying
    ]
    assert fast.headers["cache-status"].split("; ttl=")[0] == "slicecache; hit"
    assert stack.headers["cache-status"].split("; ttl=")[0] == "slicecache; hit"
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if '"request"' in line]
    hits = [line for line in lines if line["path"] == "/files/4k" and line["cache"] == "HIT"]
    assert len(hits) == 3  # the first request through either dispatch stored it
    assert hits[0].keys() == hits[1].keys() == hits[2].keys()
    assert 'slicecache_requests_total{cache="HIT",method="GET",status_class="2xx"} 3.0' in metrics


# --- access log and metrics --------------------------------------------------------------

_TEXT = st.text(max_size=20)


@given(
    st.floats(0, 2e9),
    _TEXT,
    _TEXT,
    _TEXT,
    st.integers(0, 999),
    st.integers(0, 2**40),
    st.floats(0, 1e6),
    st.floats(0, 1e6),
    _TEXT,
    _TEXT,
    _TEXT,
    st.one_of(st.none(), st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99))),
    st.one_of(st.none(), _TEXT),
)
def test_access_line_is_what_json_dumps_writes(
    ts: float,
    method: str,
    path: str,
    query: str,
    status: int,
    sent: int,
    duration: float,
    upstream: float,
    cache: str,
    request_id: str,
    client: str,
    slices: tuple[int, int, int] | None,
    aborted: str | None,
) -> None:
    ts, duration, upstream = round(ts, 3), round(duration, 3), round(upstream, 3)
    entry: dict[str, object] = {
        "ts": ts,
        "level": "info",
        "msg": "request",
        "method": method,
        "path": path,
        "query": query,
        "status": status,
        "bytes": sent,
        "duration_ms": duration,
        "upstream_ms": upstream,
        "cache": cache,
        "request_id": request_id,
        "client": client,
    }
    if slices is not None:
        entry["slices"] = {"hit": slices[0], "miss": slices[1], "coalesced": slices[2]}
    if aborted is not None:
        entry["aborted"] = aborted
    expected = json.dumps(entry, separators=(",", ":")) + "\n"
    line = access_line(
        ts,
        method,
        path,
        query,
        status,
        sent,
        duration,
        upstream,
        cache,
        request_id,
        client,
        slices,
        aborted,
    )
    assert line == expected


def test_request_ids_are_uuid4_hex() -> None:
    for _ in range(200):
        text = new_request_id()
        assert uuid.UUID(hex=text).version == 4 and uuid.UUID(hex=text).hex == text


def _get_scope(**more: Any) -> Scope:
    """The ASGI scope of a plain ``GET /a`` from 127.0.0.1."""
    return {
        "type": "http",
        "method": "GET",
        "path": "/a",
        "raw_path": b"/a",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        **more,
    }


async def _run(app: AccessLogMiddleware, status: int, more: bool = False) -> None:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": more})

    app.app = endpoint
    scope = _get_scope()

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    await app(scope, receive, send)


def test_access_log_sampling_keeps_errors_and_counts_everything() -> None:
    metrics = Metrics()
    off = io.StringIO()
    app = AccessLogMiddleware(lambda *_: None, metrics=metrics, stream=off, sample_rate=0.0)  # type: ignore[arg-type]
    for _ in range(50):
        asyncio.run(_run(app, 200))
    assert off.getvalue() == ""
    asyncio.run(_run(app, 502))
    asyncio.run(_run(app, 200, more=True))  # ended without its last body: aborted
    written = [json.loads(line) for line in off.getvalue().splitlines()]
    assert [(e["status"], "aborted" in e) for e in written] == [(502, False), (200, True)]
    exported = metrics.render().decode()
    assert 'slicecache_requests_total{cache="-",method="GET",status_class="2xx"} 51.0' in exported
    # The cut-short one is in 2xx (its status went out) and counted as incomplete.
    assert 'slicecache_responses_incomplete_total{ended_by="client"} 1.0' in exported
    every = io.StringIO()
    app = AccessLogMiddleware(lambda *_: None, metrics=Metrics(), stream=every)  # type: ignore[arg-type]
    for _ in range(20):
        asyncio.run(_run(app, 200))
    assert len(every.getvalue().splitlines()) == 20


# --- cold misses: nothing else goes out before the first bytes ------------------------------


def test_read_ahead_starts_after_the_first_bytes_of_a_cold_object(origin: Origin) -> None:
    """The fetch-ahead's origin requests (their CPU, their connections) come after the
    client has the first bytes, not between the origin's first byte and the client's."""
    from app.context import SliceStats
    from app.engine.budget import ByteBudget
    from app.engine.objects import ObjectDirectory, ObjectRequest, Opened
    from app.engine.slicer import SliceEngine
    from app.upstream.client import UpstreamClient, UpstreamTimeouts, default_transport
    from cache.memory import MemoryStore
    from cache.tiered import TieredStore

    slice_size = 64 * 1024

    async def scenario() -> tuple[int, int, int]:
        store = TieredStore(MemoryStore(64 * 1024 * 1024), None)
        upstream = UpstreamClient(origin.url, UpstreamTimeouts(5, 5, None), default_transport(8))
        engine = SliceEngine(upstream, store, slice_size, 3, 0, ByteBudget(8 * 1024 * 1024))
        runs: list[int] = []
        start_run = engine.start_run

        def counted(run: list[tuple[str, tuple[int, int]]], *a: Any, **k: Any) -> Any:
            runs.append(len(run))
            return start_run(run, *a, **k)

        engine.start_run = counted  # type: ignore[method-assign]
        directory = ObjectDirectory(engine, store, FreshnessPolicy())
        path = f"/files/{8 * slice_size}-readahead"
        host = origin.url.removeprefix("http://")
        opened = await directory.open(ObjectRequest(origin.url + path, path, [], [("host", host)]))
        assert isinstance(opened, Opened) and opened.first_fill is not None
        stream = engine.stream(
            opened.entry_key,
            path,
            opened.meta,
            0,
            opened.meta.size - 1,
            [("host", host)],
            SliceStats(),
            opened.first_fill,
        )
        first = await anext(stream)
        before_first_bytes = len(runs)
        total = len(first)
        async for piece in stream:
            total += len(piece)
        after = len(runs)
        await engine.close()
        await store.close()
        await upstream.aclose()
        return before_first_bytes, after, total

    before, after, total = asyncio.run(scenario())
    assert before == 1, f"{before - 1} fetch-ahead runs started before the first bytes"
    assert after > 1 and total == 8 * slice_size


class _HeldBodyOrigin:
    """An origin whose answers to Range requests send their head at once and their body
    only once the test releases it."""

    BODY = bytes(range(256)) * 1024  # 256 KiB: four 64 KiB slices

    def __init__(self) -> None:
        import threading

        self.released = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        fields = dict(scope["headers"])
        first, _, last = fields[b"range"].decode().removeprefix("bytes=").partition("-")
        lo, hi = int(first), min(int(last), len(self.BODY) - 1)
        await send(
            {
                "type": "http.response.start",
                "status": 206,
                "headers": [
                    (b"etag", b'"held"'),
                    (b"cache-control", b"max-age=60"),
                    (b"content-range", f"bytes {lo}-{hi}/{len(self.BODY)}".encode()),
                    (b"content-length", str(hi - lo + 1).encode()),
                ],
            }
        )
        while not self.released.is_set():
            await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": self.BODY[lo : hi + 1]})


@pytest.mark.parametrize("asked", [None, "bytes=100-70000"])
def test_a_cold_miss_sends_its_head_before_the_origins_first_body_byte(
    proxy: ProxyFactory, asked: str | None
) -> None:
    """The client's head leaves as the origin's head arrives, as nginx's does: it waits
    neither for the first body bytes nor for anything the fill does with them."""
    held = _HeldBodyOrigin()
    headers = {"range": asked} if asked else {}
    with (
        run_asgi_in_thread(held) as origin_url,
        proxy(upstream_address=origin_url, slice_size=64 * 1024) as url,
        httpx.Client(timeout=30) as client,
        client.stream("GET", url + "/held.bin", headers=headers) as response,
    ):
        # The head is here, and the origin has not sent one byte of a body yet.
        assert not held.released.is_set()
        assert response.headers["x-cache"].startswith("MISS")
        held.released.set()
        body = response.read()
    if asked is None:
        assert response.status_code == 200 and body == held.BODY
    else:
        assert response.status_code == 206 and body == held.BODY[100:70001]


def test_conditionals_are_evaluated_whatever_the_field_name_case() -> None:
    from app.httpcache.conditional import evaluate_client_conditionals

    for name in ("if-none-match", "If-None-Match", "IF-NONE-MATCH"):
        assert evaluate_client_conditionals("GET", [(name, '"e1"')], '"e1"', None) == 304
    assert evaluate_client_conditionals("GET", [("accept", "*/*")], '"e1"', None) is None


def test_a_one_slice_hit_needs_no_disconnect_watcher(
    proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher task per hit cost more than the send; a response of several slices, or
    one that waits for the origin, still gets one (a disconnect must stop its fetches)."""
    import app.engine.sliced as sliced
    from app.edge.asgi_io import DisconnectWatch as real

    watchers: list[object] = []

    def counted(receive: Receive) -> object:
        watchers.append(receive)
        return real(receive)

    monkeypatch.setattr(sliced, "DisconnectWatch", counted)
    with proxy(slice_size=64 * 1024) as url, httpx.Client() as client:
        assert client.get(url + "/files/4k-watch").headers["x-cache"] == "MISS"
        assert len(watchers) == 1  # its slice came from the origin
        hit = client.get(url + "/files/4k-watch")
        assert hit.headers["x-cache"] == "HIT" and len(hit.content) == 4096
        ranged = client.get(url + "/files/4k-watch", headers={"range": "bytes=10-19"})
        assert ranged.status_code == 206 and len(ranged.content) == 10
        assert len(watchers) == 1
        client.get(url + "/files/256k-watch")
        # A hit of four slices, asked with a field the fast path leaves to the normal one.
        client.get(url + "/files/256k-watch", headers={"x-normal-path": "1"})
        assert len(watchers) == 3


# --- what the fast path keeps between hits ---------------------------------------------------


@given(
    age_value=st.integers(min_value=0, max_value=10**6),
    initial=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    elapsed=st.floats(min_value=-1e4, max_value=1e6, allow_nan=False),
    later=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_an_age_is_steady_until_the_instant_given(
    age_value: int, initial: float, elapsed: float, later: float
) -> None:
    """The fast path reuses a head for as long as StoredAge.steady_until says: the age at
    any instant in [now, until) is the age at now, and until is never in the past."""
    from app.httpcache.freshness import StoredAge

    age = StoredAge(age_value, max(float(age_value), initial), T0)
    now = T0 + elapsed
    until = age.steady_until(now)
    assert until >= now
    inside = now + (until - now) * later
    assert age.at(inside) == age.at(now)


@given(st.lists(st.floats(min_value=0, max_value=120, allow_nan=False), max_size=50))
def test_fast_hit_ttfbs_export_as_observed_ones(ttfbs: list[float]) -> None:
    """The fast path's TTFBs, kept per bucket and added at a flush, export exactly what
    Histogram.observe would have exported for them."""
    fast, slow = Metrics(), Metrics()
    for ttfb in ttfbs:
        fast.observe_fast_hit("GET", 10, ttfb)
        slow.ttfb.labels("HIT").observe(ttfb)

    def histogram(metrics: Metrics) -> list[str]:
        lines = metrics.render().decode().splitlines()
        return [line for line in lines if line.startswith("slicecache_ttfb_seconds")]

    observed = histogram(slow)
    assert observed and histogram(fast) == observed


def test_access_lines_are_written_in_blocks() -> None:
    """Lines wait until the buffer fills or the flush interval passes; 0 writes at once."""
    from app.ops.accesslog import AccessLogWriter

    out = io.StringIO()
    at_once = AccessLogWriter(out, buffer_bytes=0)
    at_once.write("a\n")
    assert out.getvalue() == "a\n"

    async def run() -> list[str]:
        seen = []
        out = io.StringIO()
        writer = AccessLogWriter(out, buffer_bytes=10, flush_seconds=0.05)
        writer.write("1234\n")
        seen.append(out.getvalue())  # waiting
        writer.write("5678\n")  # 10 bytes: written
        seen.append(out.getvalue())
        writer.write("late\n")
        seen.append(out.getvalue())
        await asyncio.sleep(0.2)  # the interval passed: written
        seen.append(out.getvalue())
        writer.write("last\n")
        writer.flush()  # as at shutdown
        seen.append(out.getvalue())
        return seen

    assert asyncio.run(run()) == [
        "",
        "1234\n5678\n",
        "1234\n5678\n",
        "1234\n5678\nlate\n",
        "1234\n5678\nlate\nlast\n",
    ]


def test_access_lines_leave_the_process_when_written() -> None:
    """A block written is flushed through the stream's own buffer (stdout to a file or a
    pipe is block-buffered without PYTHONUNBUFFERED); the buffer takes size syntax."""
    from app.ops.accesslog import AccessLogWriter

    class Recorder(io.StringIO):
        flushed: list[str] = []

        def flush(self) -> None:
            self.flushed.append(self.getvalue())

    out = Recorder()
    AccessLogWriter(out, buffer_bytes=0).write("a\n")
    writer = AccessLogWriter(out, buffer_bytes=4)
    writer.write("bcde\n")
    assert out.flushed == ["a\n", "a\nbcde\n"]
    assert Settings(
        upstream_address="o:1", access_log_buffer_bytes="64k"
    ).access_log_buffer_bytes == (64 * 1024)


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # to the year 2100
def test_a_millisecond_clock_is_written_as_the_rounded_float_would_be(ms: int) -> None:
    """The fast path writes its timestamp from integer milliseconds (a float's repr cost
    a microsecond per line): the same text as the middleware's repr(round(t, 3))."""
    from app.ops.accesslog import ms_text

    assert ms_text(ms) == repr(round(ms / 1000, 3))
    assert json.loads(ms_text(ms)) == round(ms / 1000, 3)


class _HeldWatch:
    """A connection whose transport holds ``held`` bytes at the response's end, then is lost
    (``lost``) or writes them out."""

    def __init__(self, held: int, lost: bool) -> None:
        self.held, self._lost, self.waited = held, lost, False

    def buffered(self) -> int:
        return self.held

    async def wait(self) -> None:
        self.waited = True

    def lost(self) -> bool:
        return self._lost

    def gone(self) -> bool:
        return False

    def refused(self) -> bool:
        return False  # the writes were taken: the bytes sit in the transport


@pytest.mark.parametrize("lost", [True, False])
def test_a_whole_response_whose_last_bytes_were_lost_in_the_transport_is_a_cut(
    lost: bool,
) -> None:
    """uvicorn hands the last body message to the transport without waiting: the line waits
    for it to leave, and a connection lost with it still held is a client's cut, its bytes
    not counted as sent."""
    from app.edge.writtenout import WRITTEN_OUT

    metrics, out = Metrics(), io.StringIO()
    watch = _HeldWatch(held=3, lost=lost)

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abcdefgh"})

    async def send(message: Message) -> None:
        pass

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = _get_scope(extensions={WRITTEN_OUT: {"watch": watch}})
    app = AccessLogMiddleware(endpoint, metrics=metrics, stream=out)
    asyncio.run(app(scope, receive, send))
    entry = json.loads(out.getvalue())
    assert watch.waited
    assert entry["bytes"] == (5 if lost else 8)
    assert ("aborted" in entry) is lost
    cut = 'slicecache_responses_incomplete_total{ended_by="client"} 1.0'
    assert (cut in metrics.render().decode()) is lost


@pytest.mark.parametrize("lost", [True, False])
def test_a_cut_response_does_not_count_what_its_lost_transport_held(lost: bool) -> None:
    """A response cut short (its connection reset, or aborted by the send timeout) with
    bytes still in the transport: they were discarded, not sent (as for a whole one)."""
    from app.edge.writtenout import WRITTEN_OUT

    out = io.StringIO()
    watch = _HeldWatch(held=3, lost=lost)

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abcdefgh", "more_body": True})

    async def send(message: Message) -> None:
        pass

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = _get_scope(extensions={WRITTEN_OUT: {"watch": watch}})
    asyncio.run(AccessLogMiddleware(endpoint, metrics=Metrics(), stream=out)(scope, receive, send))
    entry = json.loads(out.getvalue())
    assert entry["bytes"] == (5 if lost else 8)
    assert "aborted" in entry
