"""The protocol's fast path (app/fasthit.py) answers exactly what the ASGI path answers.

Each comparison asks one proxy the same question twice about the same stored response,
once with the fast path off and once with it on, over raw sockets, and compares the bytes
(field order included; only the values of Date and Age, and the TTL in Cache-Status, may
move with the clock). The declines: whatever the fast path does not answer goes the normal
way, seen in its counter not moving and in the origin being asked where it must be.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import fasthit
from app.edge.httpserver import HttpProtocol
from app.httpcache.freshness import FreshnessPolicy, Outcome, decide_prepared, fresh_ttl
from app.main import create_app
from bench.origin import expected_bytes
from cache import keys
from cache.memory import SLICE
from settings import Settings
from tests.conftest import Origin
from tests.rawdisk.conftest import flip_byte, read_counts
from tests.rawdisk.test_corruption import _extent_offset
from tests.servers import run_asgi_in_thread
from tests.test_hotpath import _meta
from tests.test_httpcache_properties import _POLICY, _RESPONSE_HEADERS, _STATUS, T0
from tests.waiting import wait_for

TOKEN = "fast-path-token"


@contextmanager
def served(
    origin: Origin, timeout_keep_alive: int = 5, **overrides: Any
) -> Iterator[tuple[str, Any]]:
    """A proxy as tests/conftest.py's factory starts it, with its app at hand."""
    overrides.setdefault("upstream_address", origin.url)
    app = create_app(Settings(**overrides), configure_logs=False)
    with run_asgi_in_thread(
        app,
        proxy_headers=False,
        date_header=False,
        http=HttpProtocol,
        timeout_keep_alive=timeout_keep_alive,
    ) as url:
        yield url, app


def _answered_fast(app: Any, url: str, path: str) -> bool:
    """Asked once more: did the fast path answer (once every slice is in L1)?"""
    before = fast_hits(app)
    exchange(url, request(path, rid="warm"))
    return fast_hits(app) > before


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def _read_response(sock: socket.socket, buffer: bytearray, head_only: bool) -> bytes:
    """One whole response (Content-Length framed) from ``sock``; the rest stays in buffer."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {bytes(buffer)!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    match = re.search(rb"\r\ncontent-length: (\d+)\r\n", bytes(buffer[:end]))
    length = 0 if head_only or match is None else int(match.group(1))
    while len(buffer) < end + length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        buffer += chunk
    response = bytes(buffer[: end + length])
    del buffer[: end + length]
    return response


def exchange(url: str, *requests: bytes, head_only: bool = False) -> tuple[list[bytes], bool]:
    """Send ``requests`` at once (pipelined), read one response each; and whether the
    server then closed the connection."""
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        buffer = bytearray()
        responses = [_read_response(sock, buffer, head_only) for _ in requests]
        sock.settimeout(0.5)
        try:
            more = sock.recv(65536)
            closed = more == b""
        except TimeoutError:
            more, closed = b"", False
    # Nothing after the framed responses: a byte too many would start the next answer.
    assert bytes(buffer) + more == b"", "bytes after the last response"
    return responses, closed


def request(
    target: str, method: str = "GET", version: str = "1.1", extra: str = "", rid: str = "r1"
) -> bytes:
    return (
        f"{method} {target} HTTP/{version}\r\nHost: cache.test\r\nUser-Agent: t\r\n"
        f"X-Request-Id: {rid}\r\n{extra}\r\n"
    ).encode("latin-1")


def masked(response: bytes) -> bytes:
    """The response with the clock's values blanked: Date, Age, Cache-Status ttl."""
    response = re.sub(rb"\r\ndate: [^\r]*", b"\r\ndate: -", response)
    response = re.sub(rb"\r\nage: \d+", b"\r\nage: -", response)
    return re.sub(rb"; ttl=-?\d+", b"; ttl=-", response)


def fast_hits(app: Any) -> float:
    metrics = app.state.runtime.metrics
    metrics.flush()
    value: float = metrics.fast_path_hits._value.get()
    return value


def both(app: Any, url: str, *requests: bytes, head_only: bool = False) -> tuple[Any, Any]:
    """(slow, fast): the exchange with the fast path off, then on."""
    fast_path = app.state.runtime.fast_hit
    fast_path.enabled = False
    try:
        slow = exchange(url, *requests, head_only=head_only)
    finally:
        fast_path.enabled = True
    before = fast_hits(app)
    fast = exchange(url, *requests, head_only=head_only)
    return slow, (fast, fast_hits(app) - before)


def compared(
    app: Any, url: str, cases: list[tuple[list[bytes], bool]]
) -> list[tuple[list[bytes], list[bytes], bool]]:
    """Each case (pipelined requests, HEAD only) asked with the fast path off, then on:
    every request answered by the fast path, with the same bytes and the same closing.
    (requests, fast answers, closed after them) of each."""
    seen = []
    for requests, head_only in cases:
        (slow, slow_closed), ((fast, fast_closed), answered) = both(
            app, url, *requests, head_only=head_only
        )
        assert answered == len(requests), requests
        assert [masked(r) for r in fast] == [masked(r) for r in slow], requests
        assert fast_closed == slow_closed, requests
        seen.append((list(requests), fast, fast_closed))
    return seen


def test_a_fresh_hit_is_the_same_bytes_on_both_paths(origin: Origin) -> None:
    path = "/files/4k-fast?ct=text/plain"
    with served(origin) as (url, app):
        assert httpx.get(url + path).headers["x-cache"] == "MISS"  # stores it
        cases = [
            ([request(path)], False),
            ([request(path, "HEAD")], True),
            ([request(path, version="1.0")], False),
            ([request(path, version="1.0", extra="Connection: keep-alive\r\n")], False),
            ([request(path, extra="Connection: close\r\n")], False),
            ([request(path, extra="Accept: */*\r\nAccept-Encoding: gzip\r\n")], False),
            ([request(path, rid="a"), request(path, rid="b")], False),  # pipelined
            ([request(path, extra="Range: bytes=0-9\r\n")], False),
            ([request(path, extra="Range: bytes=-100\r\n")], False),
            ([request(path, extra="Range: bytes=4000-\r\n")], False),
            ([request(path, extra="Range: bytes=0-1,2-5\r\n")], False),  # coalesced: one
            ([request(path, "HEAD", extra="Range: bytes=10-19\r\n")], True),
            ([request(path, extra="Range: items=0-9\r\n")], False),  # not bytes: whole
        ]
        for requests, fast, fast_closed in compared(app, url, cases):
            ranged = b"Range: bytes" in requests[0]
            assert fast[0].startswith(b"HTTP/1.1 206" if ranged else b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nx-cache: HIT\r\n" in fast[0]
            assert b"\r\ncache-status: slicecache; hit; ttl=" in fast[0]
            if b"HTTP/1.0" in requests[0] or b"Connection: close" in requests[0]:
                assert fast_closed and b"\r\nconnection: close\r\n" in fast[0]
            else:
                assert not fast_closed and b"connection: close" not in fast[0]
        (plain,), _ = exchange(url, request(path))
        assert len(plain) - plain.index(b"\r\n\r\n") - 4 == 4096


def test_answers_of_several_held_slices_are_the_same_bytes_on_both_paths(
    origin: Origin,
) -> None:
    """A range across slices held in L1, up to one slice long, is answered by the fast
    path too, as the head and views of the slices; a longer answer is not (it streams
    the normal way, as the client reads it)."""
    slice_size = 64 * 1024
    path = "/files/200k-fast-slices"  # 3 full slices and part of a 4th
    with served(origin, slice_size=slice_size) as (url, app):
        httpx.get(url + path)  # stores every slice
        cases = [
            ([request(path, extra="Range: bytes=60000-70000\r\n")], False),  # across two
            ([request(path, extra="Range: bytes=65000-129999\r\n")], False),
            ([request(path, extra=f"Range: bytes={slice_size}-{2 * slice_size - 1}\r\n")], False),
            ([request(path, extra="Range: bytes=-1000\r\n")], False),  # in the last one
            ([request(path, extra="Range: bytes=190000-\r\n")], False),  # to the end
            ([request(path, "HEAD", extra="Range: bytes=1-65536\r\n")], True),
            (
                [
                    request(path, rid="a", extra="Range: bytes=0-9\r\n"),
                    request(path, extra="Range: bytes=9-65000\r\n"),
                ],
                False,
            ),
        ]
        compared(app, url, cases)
        (ranged,), _ = exchange(url, request(path, extra="Range: bytes=60000-70000\r\n"))
        body = ranged[ranged.index(b"\r\n\r\n") + 4 :]
        assert body == httpx.get(origin.url + path).content[60000:70001]
        assert b"x-cache-slices: hit=2, miss=0" in ranged
        # Longer than a slice: the normal path, the same bytes.
        before = fast_hits(app)
        for extra in ("", "Range: bytes=0-65536\r\n"):
            (long,), _ = exchange(url, request(path, extra=extra))
            assert b"x-cache: HIT" in long and fast_hits(app) == before
        # One slice missing: the normal path fetches it (the fast path declines).
        runtime = app.state.runtime
        key = meta_key(app)
        meta = runtime.directory.records.known_meta(key)
        runtime.store.l1._lru.pop((SLICE, keys.slice_key(key, meta.version, 1)))  # evicted
        (partial,), _ = exchange(url, request(path, extra="Range: bytes=0-70000\r\n"))
        assert fast_hits(app) == before and b"x-cache: PARTIAL" in partial


def test_behind_unsent_bytes_only_a_short_answer_is_made_there(origin: Origin) -> None:
    """With earlier answers still in the connection's buffer (a client that pipelines
    and does not read), an answer of more than a few KiB goes the normal way, which
    sends as the client reads: the fast path would pile up views of slices."""
    slice_size = 64 * 1024
    path = "/files/200k-pending"
    with served(origin, slice_size=slice_size) as (url, app):
        httpx.get(url + path)
        fast = app.state.runtime.fast_hit
        host = url.split("//", 1)[1].encode()

        def ask(rng: bytes, pending: int) -> Any:
            headers = [(b"host", host), (b"range", rng)]
            return fast("GET", path.encode(), headers, ("127.0.0.1", 1), True, [], pending)

        l1 = app.state.runtime.store.l1
        hits = l1.hits
        assert ask(b"bytes=0-60000", 1) is None and l1.hits == hits  # declined, uncounted
        assert ask(b"bytes=0-99", 1) is not None  # short: made here
        assert ask(b"bytes=0-60000", 0) is not None  # nothing waiting: made here


def meta_key(app: Any) -> str:
    """The object key of the only object the fast path has a plan for."""
    (key,) = app.state.runtime.fast_hit._plans
    return str(key)


def test_the_access_line_and_metrics_are_the_same_on_both_paths(origin: Origin) -> None:
    path = "/files/4k-fast-log"
    stream = io.StringIO()
    # Unbuffered: each line is on stdout when its request ends (the buffer is tested in
    # tests/test_hotpath.py).
    with served(origin, access_log_buffer_bytes=0) as (url, app):
        httpx.get(url + path)
        store = app.state.runtime.store
        assert store is not None and store.l1 is not None

        def tiers() -> list[float]:
            l1 = store.l1.stats()
            return [l1["hits"], l1["misses"], *store.counters.values()]

        def moved(method: str) -> tuple[list[float], list[float]]:
            """What one request moves in the store's counters: slow path, fast path."""
            fast_path = app.state.runtime.fast_hit
            steps = []
            for enabled in (False, True):
                fast_path.enabled = enabled
                before = tiers()
                exchange(url, request(path, method, rid="same"), head_only=method == "HEAD")
                steps.append([b - a for a, b in zip(before, tiers(), strict=True)])
            return steps[0], steps[1]

        real_stdout, sys.stdout = sys.stdout, stream
        try:
            get_slow, get_fast = moved("GET")
            head_slow, head_fast = moved("HEAD")
        finally:
            sys.stdout = real_stdout
        assert get_fast == get_slow and any(get_fast)  # an L1 hit, counted alike
        assert head_fast == head_slow
        metrics = httpx.get(url + "/_slicecache/metrics").text
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if '"request"' in line]
    assert len(lines) == 4
    for slow, fast in (lines[0:2], lines[2:4]):
        for line in (slow, fast):
            line.pop("ts"), line.pop("duration_ms")
        assert list(fast) == list(slow) and fast == slow
    assert lines[0]["slices"] == {"hit": 1, "miss": 0, "coalesced": 0}
    assert "slices" not in lines[2]  # a HEAD reads no slice
    assert 'slicecache_requests_total{cache="HIT",method="GET",status_class="2xx"} 2.0' in metrics
    assert 'slicecache_requests_total{cache="HIT",method="HEAD",status_class="2xx"} 2.0' in metrics
    assert 'slicecache_response_slices_total{result="hit"} 4.0' in metrics
    assert "slicecache_fast_path_hits_total 2.0" in metrics
    assert "slicecache_l1_hits_total" in metrics


def _lines_for(stream: io.StringIO, rid: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in stream.getvalue().splitlines()
        if f'"request_id":"{rid}"' in line
    ]


def test_a_fast_answer_is_logged_once_its_bytes_are_out_or_as_cut(origin: Origin) -> None:
    """A large fast answer goes to the transport at once, and a client that does not read
    it has little of it. Its line and metrics wait, as the normal path's do, until the
    transport holds none of it (logged whole, after its last byte) or the connection is
    lost with some still held (a client's cut, those bytes not counted as sent). After the
    wait the connection takes fast answers again."""
    size = 16 * 1024 * 1024  # one slice (the most a fast answer is), more than sockets hold
    name = "16m-fast-settle.bin"
    path = "/files/" + name
    stream = io.StringIO()
    real_stdout, sys.stdout = sys.stdout, stream
    try:
        with served(origin, slice_size=size, access_log_buffer_bytes=0) as (url, app):
            assert len(httpx.get(url + path, timeout=30).content) == size
            wait_for(lambda: _answered_fast(app, url, path), "a fast hit of the whole object")

            # A slow reader: nothing logged while the transport holds its answer.
            with socket.create_connection(_address(url), timeout=30) as sock:
                # Small: the kernel takes a few MiB of the answer, the transport the rest.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                sock.sendall(request(path, rid="slow"))
                buffer = bytearray(sock.recv(4096))
                assert buffer.startswith(b"HTTP/1.1 200")
                assert _lines_for(stream, "slow") == []
                whole = _read_response(sock, buffer, head_only=False)
                assert whole.endswith(expected_bytes(name))
                wait_for(lambda: _lines_for(stream, "slow") != [], "the slow answer's line")
                hits = fast_hits(app)
                # The same connection, again: a fast answer (its limits are back).
                sock.sendall(request(path, rid="again", extra="Range: bytes=0-9\r\n"))
                again = _read_response(sock, buffer, head_only=False)
                assert again.startswith(b"HTTP/1.1 206") and fast_hits(app) == hits + 1

            # A client that leaves with most of its answer unread.
            with socket.create_connection(_address(url), timeout=30) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(request(path, rid="cut"))
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            wait_for(lambda: _lines_for(stream, "cut") != [], "the cut answer's line")
            metrics = httpx.get(url + "/_slicecache/metrics").text
    finally:
        sys.stdout = real_stdout
    (slow,) = _lines_for(stream, "slow")
    assert slow["bytes"] == size and "aborted" not in slow
    (cut,) = _lines_for(stream, "cut")
    assert cut["aborted"] == "client disconnected" and 0 <= cut["bytes"] < size
    assert cut["status"] == 200 and cut["cache"] == "HIT"
    assert 'slicecache_responses_incomplete_total{ended_by="client"} 1.0' in metrics


def test_requests_behind_a_buffered_fast_answer_end_quietly_when_the_client_leaves(
    origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    """Two requests pipelined behind a large fast answer that the transport still holds:
    the first goes the normal way and waits for the transport, the second waits behind it.
    A client that resets then ends both without a write to the closed transport (uvicorn
    marked only the newest request as disconnected: the other woke up, wrote, and logged
    an "Exception in ASGI application" and a 502 (helper-41))."""
    size = 16 * 1024 * 1024
    path = "/files/16m-fast-pipelined.bin"
    logger = logging.getLogger("uvicorn.error")
    with served(origin, slice_size=size) as (url, app):
        logger.addHandler(caplog.handler)
        try:
            httpx.get(url + path, timeout=30)
            wait_for(lambda: _answered_fast(app, url, path), "a fast hit of the whole object")
            with socket.create_connection(_address(url), timeout=30) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(
                    request(path, rid="big")
                    + request("/files/4k-behind.bin", rid="normal", extra="X-Forwarded-For: 1\r\n")
                    + request("/files/4k-behind.bin", rid="last")
                )
                assert sock.recv(1000).startswith(b"HTTP/1.1 200")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            idle = "slicecache_active_requests 0.0"
            wait_for(lambda: idle in httpx.get(url + "/_slicecache/metrics").text, idle)
        finally:
            logger.removeHandler(caplog.handler)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_a_connection_is_kept_alive_from_when_its_fast_answer_is_out(origin: Origin) -> None:
    """The keep-alive time counts from the answer's last byte, as after a normal response:
    a client that reads a large fast answer for longer than it reuses the connection."""
    size = 16 * 1024 * 1024
    name = "16m-fast-keepalive.bin"
    path = "/files/" + name
    with served(origin, slice_size=size, timeout_keep_alive=1) as (url, app):
        httpx.get(url + path, timeout=30)
        wait_for(lambda: _answered_fast(app, url, path), "a fast hit of the whole object")
        with socket.create_connection(_address(url), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(request(path, rid="slow"))
            buffer = bytearray()
            while len(buffer) < size // 2:
                buffer += sock.recv(1024 * 1024)
            time.sleep(1.5)  # longer than the keep-alive time, with the answer still out
            assert _read_response(sock, buffer, head_only=False).endswith(expected_bytes(name))
            sock.sendall(request(path, rid="again", extra="Range: bytes=0-9\r\n"))
            assert _read_response(sock, bytearray(), head_only=False).startswith(b"HTTP/1.1 206")


def test_a_client_that_half_closes_after_its_requests_gets_every_answer(
    origin: Origin,
) -> None:
    """Pipelined requests, then shutdown(SHUT_WR): each is answered whole, then the
    connection closes. The transport used to close at the EOF: the answers after the
    first were dropped, and logged as sent (helper-41, helper-42)."""
    name = "1m-half-closed.bin"
    path = "/files/" + name
    with served(origin) as (url, _app):
        httpx.get(url + path, timeout=30)
        with socket.create_connection(_address(url), timeout=30) as sock:
            normal = "X-Forwarded-For: 10.0.0.1\r\n"  # the ASGI path, not the fast one
            sock.sendall(
                request(path, rid="a", extra=normal)
                + request(path, rid="b", extra=normal)
                + request(path, rid="c")
            )
            sock.shutdown(socket.SHUT_WR)
            buffer = bytearray()
            answers = [_read_response(sock, buffer, head_only=False) for _ in range(3)]
            assert sock.recv(65536) == b"" and not buffer  # then closed, nothing more
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(expected_bytes(name))


def test_what_the_fast_path_declines_goes_the_normal_way(origin: Origin) -> None:
    path = "/files/4k-decline"
    with served(origin, purge={"enabled": True, "auth_token": TOKEN}) as (url, app):
        httpx.get(url + path)
        declined = {
            "if-none-match": "If-None-Match: *\r\n",
            "if-modified-since": "If-Modified-Since: Wed, 01 Jan 2020 00:00:00 GMT\r\n",
            "multipart range": "Range: bytes=0-9,100-109\r\n",
            "unsatisfiable range": "Range: bytes=5000-\r\n",
            "two ranges": "Range: bytes=0-9\r\nRange: bytes=0-9\r\n",
            "if-range": 'Range: bytes=0-9\r\nIf-Range: "x"\r\n',
            "cache-control": "Cache-Control: max-age=0\r\n",
            "pragma": "Pragma: no-cache\r\n",
            "authorization": "Authorization: Basic eDp5\r\n",
            "forwarded-for": "X-Forwarded-For: 10.0.0.1\r\n",
            "two hosts": "Host: other.test\r\n",
        }
        for name, extra in declined.items():
            before = fast_hits(app)
            exchange(url, request(path, extra=extra))
            assert fast_hits(app) == before, name
        # The request's own no-cache goes to the origin (the fast path never does).
        asked = len(origin.requests_for(path))
        exchange(url, request(path, extra="Cache-Control: no-cache\r\n"))
        assert len(origin.requests_for(path)) == asked + 1
        # Still a plain hit afterwards.
        before = fast_hits(app)
        (hit,), _ = exchange(url, request(path))
        assert fast_hits(app) == before + 1 and b"x-cache: HIT" in hit
        # Purged: the next GET is the origin's again, then a fast hit once stored again.
        purge = (
            f"PURGE {path} HTTP/1.1\r\nHost: cache.test\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        (answer,), _ = exchange(url, purge.encode())
        assert answer.startswith(b"HTTP/1.1 200")
        asked = len(origin.requests_for(path))
        (after,), _ = exchange(url, request(path))
        assert b"x-cache: MISS" in after and fast_hits(app) == before + 1
        assert len(origin.requests_for(path)) > asked


def test_stale_varying_and_admin_responses_are_not_fast(origin: Origin) -> None:
    with served(origin) as (url, app):
        for path in (
            "/files/4k-stale?cc=public,%20max-age=0",
            "/files/4k-vary?vary=accept-language",
            "/files/4k-404?status=404",
        ):
            httpx.get(url + path)
            asked = len(origin.requests_for(path.split("?")[0]))
            (answer,), _ = exchange(url, request(path))
            assert fast_hits(app) == 0, path
            if "stale" in path:  # revalidated with the origin, not served from memory
                assert len(origin.requests_for(path.split("?")[0])) == asked + 1
            else:
                assert b"x-cache: HIT" in answer, path
        (admin,), _ = exchange(url, request("/_slicecache/healthz"))
        assert admin.startswith(b"HTTP/1.1 200") and fast_hits(app) == 0


def test_a_fast_hit_behind_a_running_response_waits_its_turn(origin: Origin) -> None:
    """HTTP/1.1 answers in order: a hit pipelined behind a request that goes the normal
    way is not written ahead of that request's answer."""
    path = "/files/4k-order"
    with served(origin) as (url, app):
        httpx.get(url + path)
        ranged = request(path, extra="Range: bytes=0-9,100-109\r\n", rid="first")
        (first, second), closed = exchange(url, ranged, request(path, rid="second"))
    assert first.startswith(b"HTTP/1.1 206") and b"x-request-id: first" in first
    assert second.startswith(b"HTTP/1.1 200") and b"x-request-id: second" in second
    assert not closed


def test_the_setting_turns_it_off(origin: Origin) -> None:
    with served(origin, fast_path=False) as (url, app):
        assert app.state.runtime.fast_hit is None
        httpx.get(url + "/files/4k-off")
        (hit,), _ = exchange(url, request("/files/4k-off"))
        assert b"x-cache: HIT" in hit and fast_hits(app) == 0


@hypothesis.settings(max_examples=300)
@given(_RESPONSE_HEADERS, _STATUS, _POLICY, st.lists(st.floats(0, 10**6), min_size=1, max_size=4))
def test_fresh_ttl_is_what_decide_answers_a_request_without_directives(
    headers: list[tuple[str, str]], status: int, policy: FreshnessPolicy, laters: list[float]
) -> None:
    meta = _meta(headers, status)
    for later in laters:
        now = T0 + later
        decision = decide_prepared(meta.freshness(policy), [], now)
        expected = decision.ttl if decision.outcome is Outcome.FRESH else None
        assert fresh_ttl(meta.freshness(policy), now) == expected


def test_a_repeated_hit_is_answered_without_looking_again_until_something_changes(
    origin: Origin,
) -> None:
    """A plain hit repeated is answered from what the last one looked up, while no
    metadata, L1 entry, recent slice or unsliceable mark has changed anywhere; any change
    (here: another object stored, then the object purged) sends it through the lookups."""
    path = "/files/4k-repeat"
    with served(origin, purge={"enabled": True, "auth_token": TOKEN}) as (url, app):
        httpx.get(url + path)
        # The miss's fill leaves the engine (and its metadata is adopted) as its response
        # ends, not before the client has the last byte: until then the fast path leaves
        # the request to the engine, without a lookup.
        directory = app.state.runtime.directory
        wait_for(
            lambda: directory.records._metas and not directory.engine.fills,
            "the miss's fill done and its metadata adopted",
        )
        l1 = app.state.runtime.store.l1
        reads: list[list[str]] = []
        real = l1.held_slices_now

        def counted(keys: list[str]) -> Any:
            reads.append(keys)
            return real(keys)

        l1.held_slices_now = counted
        exchange(url, request(path))  # the first fast hit looks up
        assert len(reads) == 1
        hits_before = l1.hits
        # Pipelined: all within one Age window (a new window looks up once again).
        answers, _ = exchange(url, *[request(path) for _ in range(5)])
        assert len(reads) <= 2  # answered from what was looked up
        assert l1.hits == hits_before + 5  # each counted as the normal path counts it
        assert len({masked(a) for a in answers}) == 1
        reads.clear()
        httpx.get(url + "/files/4k-repeat-other")  # stored: the L1 and the metadata moved
        exchange(url, request(path))
        assert len(reads) == 1
        purge = (
            f"PURGE {path} HTTP/1.1\r\nHost: cache.test\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        exchange(url, request(path))
        exchange(url, purge.encode())
        before = fast_hits(app)
        (after,), _ = exchange(url, request(path))
        assert b"x-cache: MISS" in after and fast_hits(app) == before


def test_a_failing_fast_path_is_counted_logged_once_and_the_normal_path_answers(
    origin: Origin, caplog: Any
) -> None:
    """A bug in the fast path costs no request: each one it fails on is served the normal
    way and counted; the failure is logged once per interval, not once per request."""
    import logging

    path = "/files/4k-fails"
    with served(origin) as (url, app):
        httpx.get(url + path)
        fast = app.state.runtime.fast_hit

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise KeyError("boom")

        fast._look_up = broken
        metrics = app.state.runtime.metrics
        with caplog.at_level(logging.WARNING, logger="slicecache.fasthit"):
            for _ in range(5):
                (answer,), _ = exchange(url, request(path))
                assert answer.startswith(b"HTTP/1.1 200") and b"x-cache: HIT" in answer
        assert metrics.fast_path_failures._value.get() == 5
        lines = [r for r in caplog.records if r.name == "slicecache.fasthit"]
        assert len(lines) == 1
        fields = lines[0].fields
        assert fields["error"] == "KeyError: 'boom'" and "test_fasthit.py" in fields["at"]


def test_the_bytes_plans_keep_outside_l1_are_bounded(
    origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan keeps the slice it last answered; L1 may evict it or a PURGE remove it, and
    the plan still holds it (helper-63: 1 MiB objects behind a 2 MB L1 held 1.28 GB)."""
    monkeypatch.setattr(fasthit, "PLAN_BODIES_MAX", 200 * 1024)
    with served(origin, l1_cache_size_bytes=2_000_000) as (url, app), httpx.Client() as client:
        fast = app.state.runtime.fast_hit

        def kept() -> int:
            return sum(len(plan.body) for plan in fast._plans.values())

        def hit_twice_fast(name: str) -> None:
            client.get(f"{url}/files/{name}")
            for _ in range(2):
                before = fast_hits(app)
                response = client.get(f"{url}/files/{name}")
                assert fast_hits(app) > before
                assert response.content == expected_bytes(name)

        for i in range(6):  # longer than PLAN_BODY_MAX: never kept, still answered here
            hit_twice_fast(f"100k-plans-{i}.bin")
        assert kept() == 0
        for i in range(12):  # 12 x 48 KiB: more than the bodies may hold together
            hit_twice_fast(f"48k-plans-{i}.bin")
            assert kept() <= 200 * 1024
            assert fast.plan_body_bytes == kept()  # the count the bound is kept by
        assert kept() > 0  # repeats are still answered from a kept body


def test_short_ranges_of_slices_only_l2_holds_are_the_same_bytes_and_counts_on_both_paths(
    origin: Origin, tmp_path: Path
) -> None:
    """A range inside one slice, up to fasthit.L2_COPY_MAX long, of an object too large to
    promote whose slice only L2 holds (in memory, verified): answered by the fast path,
    copied out of the lease, with the bytes and counters of the normal path; nothing
    promoted, nothing left pinned. Anything else (two slices, longer, not in memory,
    damaged, purged) goes the normal way."""
    slice_size = 128 * 1024
    name = "2m-fast-l2"
    path = f"/files/{name}"
    with served(
        origin,
        slice_size=slice_size,
        l1_cache_size_bytes=4 << 20,  # the 2 MiB object is more than 1/8 of it: no promotion
        enable_l2_cache=True,
        raw_disk_cache={
            "device_path": str(tmp_path / "l2.bin"),
            "total_size": 64 << 20,
            "use_direct_io": False,  # written through the page cache: resident
        },
    ) as (url, app):
        store = app.state.runtime.store
        l2 = store.l2
        httpx.get(url + path)  # stores every slice
        exchange(url, request(path, extra="Range: bytes=0-0\r\n"))  # makes the plan
        object_key = meta_key(app)
        version = app.state.runtime.directory.records.known_meta(object_key).version
        slice_keys = [keys.slice_key(object_key, version, i) for i in range(16)]
        wait_for(
            lambda: store.queue_depth == 0 and all(l2.contains_slice(k) for k in slice_keys),
            "every slice written to L2",
        )
        for key in slice_keys:
            store.l1._lru.pop((SLICE, key))  # only L2 holds them now
        cases = [
            ([request(path, extra="Range: bytes=0-99\r\n")], False),
            ([request(path, extra="Range: bytes=200000-200099\r\n")], False),
            ([request(path, extra="Range: bytes=-100\r\n")], False),  # in the last slice
            ([request(path, extra="Range: bytes=262144-327679\r\n")], False),  # 64 KiB
            (
                [
                    request(path, rid="a", extra="Range: bytes=5-9\r\n"),
                    request(path, rid="b", extra="Range: bytes=1048576-1048600\r\n"),
                ],
                False,
            ),
        ]
        for requests, fast, _ in compared(app, url, cases):
            for asked, answer in zip(requests, fast, strict=True):
                span = re.search(rb"content-range: bytes (\d+)-(\d+)/", answer)
                assert span is not None, asked
                first, last = int(span[1]), int(span[2])
                assert answer[answer.index(b"\r\n\r\n") + 4 :] == expected_bytes(
                    name, 1, first, last
                )
                assert b"x-cache-slices: hit=1, miss=0" in answer, asked
        assert not any(store.l1.contains_slice(k) for k in slice_keys)  # nothing promoted
        assert l2.stats()["leases"] == 0

        def counted() -> dict[str, float]:
            totals = read_counts(l2.stats())
            l1 = store.l1.stats()
            return {**store.counters, "l1_hits": l1["hits"], "l1_misses": l1["misses"], **totals}

        moved = []
        fast_path = app.state.runtime.fast_hit
        for enabled in (False, True):
            fast_path.enabled = enabled
            before = counted()
            exchange(url, request(path, extra="Range: bytes=400000-400099\r\n"))
            after = counted()
            moved.append({k: after[k] - before[k] for k in after if after[k] != before[k]})
        assert moved[1] == moved[0] and moved[0]["slice_hits_l2"] == 1

        def asked_slowly(rng: str) -> bytes:
            before = fast_hits(app)
            (answer,), _ = exchange(url, request(path, extra=f"Range: bytes={rng}\r\n"))
            assert fast_hits(app) == before, rng  # declined: the normal path answered
            first, last = map(int, rng.split("-"))
            assert answer[answer.index(b"\r\n\r\n") + 4 :] == expected_bytes(name, 1, first, last)
            return answer

        asked_slowly("131000-131099")  # across two slices
        asked_slowly("0-65536")  # longer than L2_COPY_MAX
        resident = l2._reads._resident
        l2._reads._resident = lambda *_: False  # as if paged out: the worker thread reads it
        try:
            asked_slowly("500000-500099")
        finally:
            l2._reads._resident = resident
        # A damaged record: never served; the normal path fetches the slice again.
        flip_byte(str(tmp_path / "l2.bin"), _extent_offset(l2, slice_keys[5]) + 8192)
        failures = l2.stats()["checksum_failures_total"]
        answer = asked_slowly(f"{5 * slice_size + 10}-{5 * slice_size + 99}")
        assert l2.stats()["checksum_failures_total"] == failures + 1
        assert b"x-cache: MISS" in answer or b"x-cache: PARTIAL" in answer
        assert l2.stats()["leases"] == 0
