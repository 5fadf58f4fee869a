"""The HTTP edge against hostile or odd request heads, on a real server over real sockets.

Each test drives the proxy with raw bytes: what a client library would never send is
exactly what an attacker or a broken client does.
"""

from __future__ import annotations

import functools
import json
import logging
import select
import signal
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.edge.h11server import H11EdgeProtocol
from app.edge.httpserver import HttpProtocol
from bench.origin import expected_bytes
from tests.conftest import Origin, ProxyFactory
from tests.test_operations import proxy_process
from tests.waiting import wait_for

MiB = 1024 * 1024


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def _exchange(url: str, request: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``request`` whole, read until the server closes or a complete answer arrives."""
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(body) >= int(value):
                        return received
        return received


def _stream_head_until_answer(url: str, head_start: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head_start`` then ``total`` filler bytes in chunks while watching for an answer.

    Returns the answer (b"" if none) and how many bytes the server let us send before it
    answered or closed: a server that reads the whole head first lets us send everything.
    """
    chunk = b"a" * (256 * 1024)
    sent = 0
    answer = b""
    deadline = time.monotonic() + 60
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.setblocking(False)
        pending = memoryview(head_start)
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 1)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
                if b"\r\n\r\n" in answer:
                    break
            if writable:
                if not pending:
                    pending = memoryview(chunk[: min(len(chunk), total - sent)])
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                pending = pending[n:]
                sent += n
        return answer, sent


@pytest.fixture(params=[HttpProtocol, H11EdgeProtocol], ids=["httptools", "h11"])
def edge(request: pytest.FixtureRequest, proxy: ProxyFactory) -> ProxyFactory:
    """The proxy over each edge protocol: ``slicecache`` runs httptools, ``uvicorn
    app.main:app --http h11`` (or a machine without httptools) the h11 one."""
    return functools.partial(proxy, http_protocol=request.param)


def test_an_oversized_header_is_refused_before_it_is_read_whole(edge: ProxyFactory) -> None:
    with edge(enable_cache=False, max_header_bytes=65536) as url:
        answer, sent = _stream_head_until_answer(
            url, b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\nX-Big: ", 64 * MiB
        )
        assert _status(answer) == 431
        # Socket buffers on loopback hold a few MiB; a server reading on would take all 64.
        assert sent < 16 * MiB
        # The server is still fine for others.
        assert _status(_exchange(url, b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n\r\n")) == 200


def test_an_oversized_target_is_refused_before_it_is_read_whole(edge: ProxyFactory) -> None:
    with edge(enable_cache=False, max_request_target_bytes=8192) as url:
        answer, sent = _stream_head_until_answer(url, b"GET /files/", 64 * MiB)
        assert _status(answer) == 414
        assert sent < 16 * MiB


def test_many_small_headers_past_the_limit_get_431(edge: ProxyFactory) -> None:
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 100) for i in range(2000))
    with edge(enable_cache=False, max_header_bytes=65536) as url:
        answer = _exchange(url, b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    assert _status(answer) == 431


def test_a_head_just_under_the_limits_is_served(edge: ProxyFactory) -> None:
    with edge(enable_cache=False, max_header_bytes=65536) as url:
        value = b"v" * 60000
        answer = _exchange(url, b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Big: " + value + b"\r\n\r\n")
    assert _status(answer) == 200


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        raise AssertionError(f"connection still open at the deadline, got {received[:100]!r}")
    return received


def test_a_partial_head_gets_408_after_the_head_timeout(edge: ProxyFactory) -> None:
    with edge(enable_cache=False, request_head_timeout=0.5) as url:
        with socket.create_connection(_address(url)) as sock:
            sock.sendall(b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n")
            answer = _read_until_closed(sock, time.monotonic() + 30)
    assert _status(answer) == 408


def test_a_silent_connection_is_closed_after_the_head_timeout(edge: ProxyFactory) -> None:
    with edge(enable_cache=False, request_head_timeout=0.5) as url:
        with socket.create_connection(_address(url)) as sock:
            assert _read_until_closed(sock, time.monotonic() + 30) == b""


def test_a_trickled_head_is_cut_off_by_the_head_timeout(edge: ProxyFactory) -> None:
    """Slowloris: one byte at a time keeps every per-read timer happy, not this one."""
    with edge(enable_cache=False, request_head_timeout=0.5) as url:
        with socket.create_connection(_address(url)) as sock:
            sock.sendall(b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n")
            deadline = time.monotonic() + 30
            answer = b""
            while time.monotonic() < deadline:
                try:
                    sock.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    break
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    answer = _read_until_closed(sock, deadline)
                    break
            else:
                raise AssertionError("the trickle was never cut off")
    assert _status(answer) == 408


def test_a_keep_alive_connection_serves_a_second_request(edge: ProxyFactory) -> None:
    with edge(enable_cache=False, request_head_timeout=5) as url:
        with socket.create_connection(_address(url), timeout=10) as sock:
            for _ in range(2):
                sock.sendall(b"GET /echo/k HTTP/1.1\r\nHost: t\r\n\r\n")
                received = b""
                while b'"headers"' not in received or not received.rstrip().endswith(b"}"):
                    chunk = sock.recv(65536)
                    assert chunk
                    received += chunk
                assert _status(received) == 200


def test_past_the_connection_cap_the_longest_idle_connection_makes_room(
    edge: ProxyFactory,
) -> None:
    with edge(enable_cache=False, max_client_connections=4) as url:
        idle = [socket.create_connection(_address(url)) for _ in range(4)]
        try:
            answer = _exchange(url, b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _status(answer) == 200
            # The first idle connection was closed to make room.
            assert _read_until_closed(idle[0], time.monotonic() + 30) == b""
        finally:
            for sock in idle:
                sock.close()


def test_past_the_connection_cap_with_every_connection_busy_a_new_one_gets_503(
    edge: ProxyFactory, origin: Origin
) -> None:
    with edge(enable_cache=False, max_client_connections=2) as url:
        seen = len(origin.requests_for("/slow-headers"))
        busy = [socket.create_connection(_address(url)) for _ in range(2)]
        try:
            for sock in busy:
                sock.sendall(b"GET /slow-headers?ms=5000 HTTP/1.1\r\nHost: t\r\n\r\n")
            # Both heads are read (their origin requests are out) before the third arrives.
            deadline = time.monotonic() + 30
            while len(origin.requests_for("/slow-headers")) < seen + 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            answer = _exchange(url, b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _status(answer) == 503
        finally:
            for sock in busy:
                sock.close()


def _get(
    url: str, head_fields: bytes, target: bytes = b"/files/1k.bin", version: bytes = b"1.1"
) -> bytes:
    request = (
        b"GET "
        + target
        + b" HTTP/"
        + version
        + b"\r\n"
        + head_fields
        + b"Connection: close\r\n\r\n"
    )
    return _exchange(url, request)


def test_a_host_that_is_not_uri_host_and_port_gets_400(proxy: ProxyFactory) -> None:
    with proxy(preserve_host=True) as url:
        host, port = _address(url)
        for bad in [
            b"victim.example#",
            b"%s:%d/files/1m.bin#" % (host.encode(), port),
            b"victim.example/x",
            b"victim.example?x",
            b"user@victim.example",
            b"victim.example:80:80",
            b"victim.example:99999",
            b"[::1",
            b"[zz::1]",
            b"victim example",
            b"victim.example:8o",
        ]:
            assert _status(_get(url, b"Host: " + bad + b"\r\n")) == 400, bad


def test_a_host_with_a_fragment_cannot_store_another_urls_bytes(proxy: ProxyFactory) -> None:
    with proxy(preserve_host=True) as url:
        host, port = _address(url)
        attack = b"Host: %s:%d/files/1m.bin#\r\n" % (host.encode(), port)
        _get(url, attack, target=b"/files/1k.bin")
        victim = _get(url, b"Host: %s:%d\r\n" % (host.encode(), port), target=b"/files/1m.bin")
    assert _status(victim) == 200
    assert len(victim.partition(b"\r\n\r\n")[2]) == MiB


def test_valid_hosts_are_served(proxy: ProxyFactory) -> None:
    with proxy(preserve_host=True) as url:
        for good in [
            b"victim.example",
            b"Victim.Example:8080",
            b"127.0.0.1:80",
            b"[::1]:80",
            b"a-b.c_d~e!$&'()*+,;=",
        ]:
            assert _status(_get(url, b"Host: " + good + b"\r\n")) == 200, good


def test_two_hosts_or_none_in_http_1_1_get_400(proxy: ProxyFactory) -> None:
    with proxy() as url:
        assert _status(_get(url, b"Host: a\r\nHost: b\r\n")) == 400
        assert _status(_get(url, b"Host: a\r\nhost: a\r\n")) == 400
        assert _status(_get(url, b"")) == 400
        # HTTP/1.0 needs no Host.
        assert _status(_get(url, b"", version=b"1.0")) == 200


def _json_body(answer: bytes) -> dict[str, Any]:
    return dict(json.loads(answer.partition(b"\r\n\r\n")[2]))


def test_a_padded_content_length_is_forwarded_normalized(proxy: ProxyFactory) -> None:
    with proxy(enable_cache=False) as url:
        for padded in [b"3 ", b"3\t", b" 3"]:
            answer = _exchange(
                url,
                b"POST /echo/p HTTP/1.1\r\nHost: t\r\nContent-Length: "
                + padded
                + b"\r\nConnection: close\r\n\r\nabc",
            )
            assert _status(answer) == 200, (padded, answer[:300])
            echoed = _json_body(answer)
            assert echoed["body_length"] == 3
            assert ["content-length", "3"] in echoed["headers"]


def test_content_length_with_transfer_encoding_gets_400_and_a_close_on_every_edge(
    edge: ProxyFactory, origin: Origin
) -> None:
    """RFC 9112 6.1: framing two ways at once is how requests are smuggled. httptools
    refuses it; over h11 (which frames by chunked) the client's Content-Length was forwarded
    beside the de-chunked body: the origin waited for bytes that never came (a 504 after
    the read timeout) or got a body cut to that length. Both edges: 400, then close."""
    with edge(enable_cache=False) as url:
        for body in [b"0\r\n\r\n", b"a\r\nhelloworld\r\n0\r\n\r\n"]:
            origin.app.clear_log()
            answer = _exchange(
                url,
                b"POST /echo/te-cl HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                + body
                + b"GET /echo/after HTTP/1.1\r\nHost: t\r\n\r\n",
                timeout=20,
            )
            assert _status(answer) == 400, answer[:300]
            assert b"/echo/after" not in answer  # nothing after it on this connection is read
            assert origin.requests_for("/echo/te-cl") == []


def test_header_bytes_above_0x7f_reach_the_origin_unchanged(proxy: ProxyFactory) -> None:
    for settings in [{"enable_cache": False}, {}]:
        with proxy(**settings) as url:
            for target in [b"/echo/latin", b"/files/1k.bin"]:
                answer = _exchange(
                    url,
                    b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nX-Name: caf\xe9\xff\r\n"
                    b"Connection: close\r\n\r\n",
                )
                assert _status(answer) == 200, (settings, target, answer[:300])
                if target.startswith(b"/echo"):
                    assert ["x-name", "caf\xe9\xff"] in _json_body(answer)["headers"]


def test_the_admin_prefix_is_matched_on_the_raw_path(proxy: ProxyFactory, origin: Origin) -> None:
    """Routing is on the path as sent (the origin gets it so): encoded, it is not admin."""
    with proxy(enable_cache=False) as url:
        assert b'"hit_ratio"' in _get(url, b"Host: t\r\n", target=b"/_slicecache/stats")
        forwarded = len(origin.requests_for("/_slicecache/stats"))
        for target in [b"/%5fslicecache/stats", b"/%5Fslicecache/stats", b"/_slicecache%2fstats"]:
            answer = _get(url, b"Host: t\r\n", target=target)
            assert b'"hit_ratio"' not in answer, target
        # The origin (which decodes) saw all three: they were forwarded, as sent.
        assert len(origin.requests_for("/_slicecache/stats")) == forwarded + 3


def test_a_shutdown_grace_below_one_second_is_kept(origin: Origin) -> None:
    """``int(0.5) or None`` made a half-second grace an unbounded wait for in-flight responses."""
    with proxy_process(
        origin, enable_cache="false", drain_seconds="0", shutdown_grace_seconds="0.5"
    ) as (process, url):
        seen = len(origin.requests_for("/slow-headers"))  # the origin is the session's
        with socket.create_connection(_address(url)) as sock:
            sock.sendall(b"GET /slow-headers?ms=120000 HTTP/1.1\r\nHost: t\r\n\r\n")
            # The SIGTERM must find a response in flight, or the grace is never exercised.
            wait_for(
                lambda: len(origin.requests_for("/slow-headers")) > seen,
                "the request reached the origin",
            )
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0


class RawOrigin:
    """An origin that answers every request with the same canned bytes, then closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        origin = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    received += chunk
                origin.requests += 1
                self.request.sendall(origin.answer)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_origin_status_outside_100_599_is_a_502(proxy: ProxyFactory) -> None:
    for status in [b"999", b"600", b"099"]:
        raw = RawOrigin(
            b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        try:
            for settings in [{"enable_cache": False}, {}]:
                with proxy(upstream_address=raw.url, **settings) as url:
                    answer = _get(url, b"Host: t\r\n", target=b"/x")
                    assert _status(answer) == 502, (status, settings, answer[:200])
        finally:
            raw.close()


class ClosingOrigin:
    """Answers the first request of each connection (keep-alive), and closes the connection
    on reading a second one: an origin that closed an idle connection just as it was reused."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.connections = 0
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        origin = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                origin.connections += 1
                received = b""
                served = 0
                while True:
                    while b"\r\n\r\n" not in received:
                        chunk = self.request.recv(65536)
                        if not chunk:
                            return
                        received += chunk
                    if served:
                        return  # closed "while idle"
                    head, _, received = received.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(received) < length:
                        chunk = self.request.recv(65536)
                        if not chunk:
                            return
                        received += chunk
                    origin.bodies.append(received[:length])
                    received = received[length:]
                    served += 1
                    self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_streamed_put_on_a_pooled_connection_the_origin_closed_is_retried(
    proxy: ProxyFactory,
) -> None:
    origin = ClosingOrigin()
    try:
        with proxy(upstream_address=origin.url, enable_cache=False) as url:
            assert _status(_get(url, b"Host: t\r\n", target=b"/first")) == 200
            body = bytes(range(256)) * 400
            answer = _exchange(
                url,
                b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % len(body) + body,
            )
            assert _status(answer) == 200, answer[:300]
            assert origin.bodies[-1] == body
            assert origin.connections == 2
    finally:
        origin.close()


def _answers(sock: socket.socket, count: int, deadline: float) -> list[int]:
    """The statuses of ``count`` Content-Length-framed answers read from ``sock``."""
    buffer = b""
    statuses: list[int] = []
    sock.settimeout(0.5)
    while len(statuses) < count and time.monotonic() < deadline:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end].lower()
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            if len(buffer) >= end + 4 + length:
                statuses.append(_status(buffer))
                buffer = buffer[end + 4 + length :]
                continue
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            break
        buffer += chunk
    return statuses


def test_pipelined_heads_are_counted_one_by_one_against_the_head_limit(
    edge: ProxyFactory,
) -> None:
    """Many small pipelined requests in one read add up to more than MAX_HEADER_BYTES:
    each is within it, so each is answered (none is taken for one oversized head)."""
    requests = b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\nX-Pad: 0123456789\r\n\r\n" * 300
    assert len(requests) > 4 * 4096
    with edge(max_header_bytes=4096) as url:
        _exchange(url, b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n\r\n")  # stored
        with socket.create_connection(_address(url)) as sock:
            sock.sendall(requests)
            statuses = _answers(sock, 300, time.monotonic() + 60)
    assert statuses == [200] * 300


def test_a_head_the_server_has_not_read_yet_is_not_timed_out(proxy: ProxyFactory) -> None:
    """A slow response runs, a request waits behind it (reading is paused) and the start
    of a third head came with it: the rest of that head, sent in time, is unread until the
    server reads again, so the head timeout does not cut it off."""
    with proxy(request_head_timeout=1.0) as url:
        with socket.create_connection(_address(url)) as sock:
            sock.sendall(
                b"GET /files/1k.bin?latency_ms=2500 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /files/2k.bin HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /files/3k.bin HTTP/1.1\r\nHo"
            )
            time.sleep(0.3)
            sock.sendall(b"st: t\r\n\r\n")
            statuses = _answers(sock, 3, time.monotonic() + 30)
    assert statuses == [200, 200, 200]


def test_chunked_trailers_never_join_the_request_head(edge: ProxyFactory) -> None:
    """RFC 9110 6.5.1: trailer fields are not header fields. uvicorn's httptools protocol
    appended them to the scope's headers: a forged Authorization, X-Request-Id or Range
    reached the origin and the cache's own decisions (helper-47 finding 1). Each request
    whose trailer fields were dropped is counted."""
    with edge(enable_cache=False) as url:
        answer = _exchange(
            url,
            b"POST /echo/trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\nAuthorization: Bearer z\r\n"
            b"X-Request-Id: forged\r\nRange: bytes=0-1\r\n\r\n",
        )
        metrics = httpx.get(url + "/_slicecache/metrics").text
    assert 'slicecache_edge_ignored_total{what="trailer"} 1.0' in metrics
    assert _status(answer) == 200
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    names = {name.lower(): value for name, value in echoed["headers"]}
    assert "authorization" not in names and "range" not in names
    assert names["x-request-id"] != "forged"


def test_an_http10_client_never_gets_100_continue(edge: ProxyFactory) -> None:
    """RFC 9110 10.1.1 and 15.2: an HTTP/1.0 request's 100-continue is ignored and no 1xx
    goes to an HTTP/1.0 client (helper-47 finding 2)."""
    with edge(enable_cache=False) as url:
        answer = _exchange(
            url,
            b"POST /echo/expect HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\nhello",
        )
    assert _status(answer) == 200 and b"100 Continue" not in answer


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /echo/v HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /echo/v HTTP/3.0\r\nHost: x\r\n\r\n",
        b"GET /echo/v\r\n\r\n",
    ],
    ids=["http2.0", "http3.0", "http0.9"],
)
def test_a_version_other_than_http1_is_505(
    edge: functools.partial[Any], origin: Origin, request_line: bytes
) -> None:
    """RFC 9110 15.6.6: the parser reads HTTP/2.0 (and a 0.9 line without a head) as a
    request; it was proxied and cached (helper-47 finding 3)."""
    with edge() as url:
        answer = _exchange(url, request_line)
    h11_09 = edge.keywords["http_protocol"] is H11EdgeProtocol and b"HTTP/" not in request_line
    # h11 cannot parse a 0.9 request line at all: a malformed request.
    assert _status(answer) == (400 if h11_09 else 505)
    assert origin.requests_for("/echo/v") == []


def test_a_higher_http1_minor_version_is_answered_as_http11(
    edge: functools.partial[Any], origin: Origin
) -> None:
    """RFC 9112 2.3: HTTP/1.2 is processed as HTTP/1.1 (kept alive, Host required), as
    nginx does; httptools refused it as malformed (400) and h11's edge with a 505."""
    path = f"/echo/v12-{uuid.uuid4().hex}".encode()
    with edge() as url, socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(
            b"GET %s HTTP/1.2\r\nHost: x\r\n\r\nGET %sb HTTP/1.9\r\nHost: x\r\n\r\n" % (path, path)
        )
        statuses = _answers(sock, 2, time.monotonic() + 10)
        no_host = _exchange(url, b"GET /echo/v12c HTTP/1.2\r\n\r\n")
    assert statuses == [200, 200]  # in HTTP/1.1 answers (_status), the connection kept
    assert len(origin.requests_for(path.decode())) == 1
    assert len(origin.requests_for(path.decode() + "b")) == 1
    assert _status(no_host) == 400


def test_an_absolute_form_target_is_the_origin_form_for_its_host(
    edge: functools.partial[Any], origin: Origin
) -> None:
    """RFC 9112 3.2.2: a server MUST accept the absolute form and ignore the Host field for
    it; h11's edge routed ``http://host/path`` nowhere (404). Its host is what the proxy
    keys and forwards when it preserves Host; an empty path is "/"; userinfo is refused
    (RFC 9110 4.2.4)."""
    path = f"/echo/abs-{uuid.uuid4().hex}"
    with edge(enable_cache=False, preserve_host=True) as url:
        answer = _exchange(
            url,
            b"GET http://Other.example:8080%s?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            % path.encode(),
        )
        root = _exchange(url, b"GET http://x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        userinfo = _exchange(
            url, b"GET http://u:p@x/echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        no_host = _exchange(url, b"GET http://x/echo/a HTTP/1.1\r\nConnection: close\r\n\r\n")
        http10 = _exchange(url, b"GET http://b.example/echo/h10 HTTP/1.0\r\n\r\n")
        empty_user = _exchange(
            url, b"GET http://@x/echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        long = _exchange(
            url,
            b"GET http://%s/echo/long HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            % (b"h" * 9000),
        )
        authority_form = _exchange(
            url, b"GET x.example:80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        server_options = _exchange(  # RFC 9112 3.2.4: OPTIONS * (answered here)
            url, b"OPTIONS http://x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    # An HTTP/1.0 request needs no Host: the target's is the one keyed and forwarded.
    echoed10 = json.loads(http10.partition(b"\r\n\r\n")[2])
    assert {name.lower(): value for name, value in echoed10["headers"]}["host"] == "b.example"
    assert _status(empty_user) == 400
    assert _status(long) == 414  # the whole target counts, as in the origin form
    assert _status(authority_form) == 400
    assert _status(server_options) == 200 and origin.requests_for("*") == []
    assert _status(answer) == 200
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert (echoed["path"], echoed["query"]) == (path, "q=1")
    assert {name.lower(): value for name, value in echoed["headers"]}["host"] == (
        "Other.example:8080"
    )
    assert _status(root) == 404  # the origin's answer for "/"
    assert origin.requests_for("/")
    assert _status(userinfo) == 400 and origin.requests_for("/echo/a") == []
    assert _status(no_host) == 400  # HTTP/1.1 still needs its Host field (RFC 9112 3.2)


def test_a_body_after_an_ignored_upgrade_is_never_a_request(
    edge: functools.partial[Any], origin: Origin
) -> None:
    """httptools ends a message that asks for an Upgrade at its head, and the edge, which
    ignores the Upgrade, parsed the body as the next request (helper-54: a request
    smuggled past a front proxy that forwards the body as opaque bytes). The body is read
    as a body now, on both edges, whole or trickled (curl --http2 -d sends such a POST);
    a request behind it and one without a body are answered; CONNECT with a body is 400."""
    smuggled = f"/echo/smuggled-{uuid.uuid4().hex}".encode()
    inner = b"GET %s HTTP/1.1\r\nHost: inner.example\r\n\r\n" % smuggled
    head = (
        b"POST /echo/outer HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        b"Content-Length: %d\r\n\r\n" % len(inner)
    )
    after = b"GET /echo/after HTTP/1.1\r\nHost: h\r\n\r\n"
    with edge(enable_cache=False) as url:
        answers = []
        for pause in (0.0, 0.2):
            with socket.create_connection(_address(url), timeout=10) as sock:
                sock.sendall(head + (b"" if pause else inner + after))
                if pause:
                    time.sleep(pause)  # the body in later reads, byte by byte at first
                    for byte in inner[:8]:
                        sock.sendall(bytes([byte]))
                    sock.sendall(inner[8:] + after)
                sock.shutdown(socket.SHUT_WR)
                answers.append(_read_to_close(sock))
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(
                b"GET /echo/up HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\nConnection: Upgrade\r\n"
                b"Content-Length: 0\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: h\r\n\r\n"
            )
            bodiless = _answers(sock, 2, time.monotonic() + 10)
        connect = _exchange(
            url,
            b"CONNECT x.example:80 HTTP/1.1\r\nHost: x.example:80\r\nContent-Length: %d\r\n\r\n%s"
            % (len(inner), inner),
        )
    assert origin.requests_for(smuggled.decode()) == []
    for answer in answers:
        assert answer.count(b"HTTP/1.1 ") == 2, answer[:400]
        first = answer[: answer.index(b"HTTP/1.1 ", 1)]
        assert _status(first) == 200
        echoed = json.loads(first.partition(b"\r\n\r\n")[2])
        assert (echoed["path"], echoed["body_length"]) == ("/echo/outer", len(inner))
        assert b'"path":"/echo/after"' in answer
    assert bodiless == [200, 200]
    assert _status(connect) == 400


def test_an_ignored_upgrade_is_counted_on_both_edges(edge: ProxyFactory) -> None:
    """h11's edge logged uvicorn's two warnings for each (helper-54), uncounted."""
    with edge(enable_cache=False) as url:
        answer = _exchange(
            url,
            b"GET /echo/u HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        metrics = httpx.get(url + "/_slicecache/metrics").text
    assert _status(answer) == 200
    assert 'slicecache_edge_ignored_total{what="upgrade"} 1.0' in metrics


def test_the_whole_target_counts_towards_its_limit(
    edge: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The query's "?" too (helper-55: h11's edge let an 8193-byte target through). And a
    malformed request is logged once, by the edge (h11's uvicorn warned for each too)."""
    uvicorn_log = logging.getLogger("uvicorn.error")  # it does not propagate to root
    with edge(enable_cache=False, max_request_target_bytes=8192) as url:
        at_limit = b"/echo/q?" + b"b" * (8192 - 8)
        over = at_limit + b"b"
        answers = [
            _exchange(url, b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % t)
            for t in (at_limit, over, b"http://h.test" + over[:-13])
        ]
        uvicorn_log.addHandler(caplog.handler)
        try:
            malformed = _exchange(url, b"GET / HTTP/1.1\r\nHost: a\r\nBad Field\r\n\r\n")
        finally:
            uvicorn_log.removeHandler(caplog.handler)
    assert [_status(answer) for answer in answers] == [200, 414, 414]
    assert _status(malformed) == 400
    assert not [r for r in caplog.records if r.getMessage() == "Invalid HTTP request received."]


@pytest.mark.parametrize("coding", [b"identity", b"gzip", b"chunked, gzip"])
def test_a_final_coding_other_than_chunked_is_400_before_any_request(
    edge: ProxyFactory, coding: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """RFC 9112 6.3: no knowable length, so 400 and close. httptools failed it only after
    its head had become a request: that request's 501 was logged while the client got
    the parser's 400 (helper-56)."""
    with edge(enable_cache=False, access_log_buffer_bytes=0) as url:
        answer = _exchange(
            url,
            b"POST /echo/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s\r\n\r\n" % coding,
        )
        time.sleep(0.2)
    assert _status(answer) == 400 and answer.count(b"HTTP/1.1 ") == 1
    assert '"path":"/echo/te"' not in capsys.readouterr().out  # no access line


def test_a_bad_chunk_after_the_answer_began_is_counted(edge: ProxyFactory) -> None:
    """The answer is cut (it cannot be appended to), and the refusal counted and logged on
    both edges: on h11 only uvicorn's warning said so, and that warning is filtered out."""
    with edge() as url, socket.create_connection(_address(url), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(
            b"GET /files/8m-bad-chunk.bin HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        assert _status(sock.recv(65536)) == 200  # passed through: the answer has begun
        sock.sendall(b"ZZZ\r\nxx\r\n")
        cut = _read_to_close(sock)
        metrics = httpx.get(url + "/_slicecache/metrics").text
    assert len(cut) < 8 * MiB
    assert 'slicecache_edge_refusals_total{status="400"} 1.0' in metrics


def test_an_unknown_method_is_501_and_a_non_token_one_400(edge: functools.partial[Any]) -> None:
    """RFC 9110 9.1: a method the proxy cannot forward is not implemented; the parser
    knows a fixed list (helper-47 finding 4: every unknown method got 400)."""
    with edge(enable_cache=False) as url:
        unknown = _exchange(url, b"FOO /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        garbage = _exchange(url, b"G\x01T /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        known = _exchange(url, b"PROPFIND /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(garbage) == 400
    assert _status(known) == 200
    if edge.keywords["http_protocol"] is H11EdgeProtocol:
        # h11 parses any token as a method: it is forwarded, as nginx forwards it (the
        # origin here, uvicorn with httptools, refuses it in turn).
        assert b"via: 1.1 slicecache" in unknown.lower()
    else:
        assert _status(unknown) == 501


def _access_lines(
    capsys: pytest.CaptureFixture[str], needle: str
) -> Callable[[], list[dict[str, Any]]]:
    """A poll for the access lines (written at once: ``access_log_buffer_bytes=0``) that
    contain ``needle``, over all the output captured since the first call."""
    out = ""

    def lines() -> list[dict[str, Any]]:
        nonlocal out
        out += capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if needle in line]

    return lines


def test_a_body_cut_by_the_clients_close_lets_go_of_the_origin(
    edge: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A client that sends part of its body and half-closes will never send the rest: the
    origin request is abandoned at once (nginx: "client prematurely closed connection").
    It was held until the origin's read timeout (helper-47 finding 5), here 60 s, longer
    than this client or the wait for the access line below."""
    with edge(enable_cache=False, read_timeout=60.0, access_log_buffer_bytes=0) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                b"POST /echo/cut-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
            )
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer == b"" or _status(answer) == 400
        # The request has ended: its origin request was let go.
        (line,) = wait_for(_access_lines(capsys, "/echo/cut-body"), "the cut request's line")
        assert line["aborted"] == "client disconnected during upload"
        # The server is fine for others.
        assert _status(_exchange(url, b"GET /echo/after HTTP/1.1\r\nHost: t\r\n\r\n")) == 200


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything until the server closes (a socket timeout fails the test)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_a_queued_request_cut_by_a_half_close_is_dropped_after_the_answer_before_it(
    edge: functools.partial[Any],
) -> None:
    """A POST pipelined behind a streaming GET, its body short, then the client's half-close:
    the GET's answer arrives whole and the connection closes. The POST used to be run after
    it, waiting for the body timeout or the origin's read timeout (helper-48 finding 1),
    both longer here than the client's wait."""
    name = "2m-pipe-cut.bin"
    with edge(read_timeout=60.0, request_head_timeout=60.0) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(
                f"GET /files/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                + b"POST /echo/queued HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nxxxxxxxxxx"
            )
            sock.shutdown(socket.SHUT_WR)
            time.sleep(0.2)  # the GET is still being written when the EOF arrives
            answer = _read_to_close(sock)
        metrics = httpx.get(url + "/_slicecache/metrics").text
    head, _, body = answer.partition(b"\r\n\r\n")
    assert _status(head) == 200
    assert body == expected_bytes(name)  # whole, and nothing after it
    if edge.keywords["http_protocol"] is not H11EdgeProtocol:
        # Never run, it has no access line: counted as nginx's 400 for a client that
        # closed early. (h11 reads no request behind a running one: the POST runs, and
        # its access line says the client left.)
        assert 'slicecache_edge_refusals_total{status="400"} 1.0' in metrics


def test_a_trailer_section_over_the_limits_is_431(edge: ProxyFactory) -> None:
    """Trailer fields share the head's limits (helper-48 finding 2: unlimited on httptools,
    a 414 on h11, its first line taken for a request target); the request behind it on
    the connection is not answered."""
    with edge(enable_cache=False) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                b"POST /echo/trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
                b"GET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            answer = _read_to_close(sock)
        assert _status(answer) == 431 and answer.count(b"HTTP/1.1 ") == 1
        assert _status(_exchange(url, b"GET /echo/fine HTTP/1.1\r\nHost: t\r\n\r\n")) == 200


def test_a_non_token_method_pipelined_after_a_request_is_400(edge: ProxyFactory) -> None:
    """The method of a request that began in an earlier message's read was taken from that
    message: a non-token method got 501 (helper-48 finding 3)."""
    with edge(enable_cache=False) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                b"GET /echo/first HTTP/1.1\r\nHost: x\r\n\r\nG@T / HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            answer = _read_to_close(sock)
    statuses = [int(answer[i + 9 : i + 12]) for i in _starts(answer, b"HTTP/1.1 ")]
    assert statuses == [200, 400]


def _starts(data: bytes, needle: bytes) -> list[int]:
    """Offsets of the status lines (the echo body is JSON: no status line in it)."""
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def test_head_with_the_asterisk_target_gets_a_head_alone(
    edge: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its access line counts no body bytes (helper-48: the 400's text was counted)."""
    with edge(access_log_buffer_bytes=0) as url:
        answer = _exchange(url, b"HEAD * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert _status(head) == 400 and body == b""
        (line,) = wait_for(_access_lines(capsys, '"method":"HEAD"'), "the HEAD's access line")
    assert line["status"] == 400 and line["bytes"] == 0


def test_a_bad_body_of_a_queued_request_is_refused_after_the_answer_before_it(
    edge: ProxyFactory,
) -> None:
    """A bad chunk in a POST pipelined behind a streaming GET: the GET's answer arrives
    whole, then the 400. The refusal was written at once, into the GET's body."""
    name = "2m-pipe-bad-chunk.bin"
    with edge() as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(
                f"GET /files/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                + b"POST /echo/bad-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"\r\nzz\r\nabc\r\n"
            )
            time.sleep(0.2)  # the GET is still being written when the chunk is parsed
            answer = _read_to_close(sock)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert _status(head) == 200
    size = len(expected_bytes(name))
    assert rest[:size] == expected_bytes(name)
    assert _status(rest[size:]) == 400


def test_a_queued_requests_body_timeout_follows_the_answer_before_it(
    edge: functools.partial[Any],
) -> None:
    """A request pipelined behind a slow one, its body stalled: the slow one's answer
    arrives whole, then the 408. The 408 was written at the body timeout, before the
    answer, which was lost (helper-49 finding 1). h11 has no body timer: there the
    queued request waits its turn, and the client's half-close ends it."""
    with edge(enable_cache=False, request_head_timeout=0.5) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                b"POST /echo/slow?latency_ms=1500 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                b"\r\nabcPOST /echo/stalled HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123"
            )
            if edge.keywords["http_protocol"] is H11EdgeProtocol:
                time.sleep(2.0)
                sock.shutdown(socket.SHUT_WR)
            answer = _read_to_close(sock)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert _status(head) == 200
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert json.loads(rest[:length])["path"] == "/echo/slow"
    after = rest[length:]
    assert after == b"" or _status(after) == 408


def test_a_half_close_after_a_queued_bad_chunk_keeps_the_answers_before_it(
    edge: ProxyFactory,
) -> None:
    """The bad chunk's request was dropped for its refusal; the half-close then closed
    the connection at once, and the answer before it was lost (helper-49 finding 2)."""
    with edge(enable_cache=False) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                b"POST /echo/first?latency_ms=300 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                b"\r\nabcPOST /echo/bad HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nabc\r\nZZ\r\n"
            )
            sock.shutdown(socket.SHUT_WR)
            answer = _read_to_close(sock)
    statuses = [int(answer[i + 9 : i + 12]) for i in _starts(answer, b"HTTP/1.1 ")]
    assert statuses == [200, 400]
    assert b'"path":"/echo/first"' in answer


def test_a_queued_upload_still_arriving_is_answered_after_the_one_before_it(
    edge: ProxyFactory,
) -> None:
    """A POST pipelined behind a slow GET, the rest of its body sent after the GET's
    answer: both are answered (helper-50 found a version of the early-answer close that
    dropped it)."""
    with edge(enable_cache=False) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                b"GET /echo/first?latency_ms=300 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /echo/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n"
                + b"a"
                * 50_000
            )
            time.sleep(0.8)  # the GET has been answered meanwhile
            sock.sendall(
                b"b" * 150_000 + b"GET /echo/last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            answer = _read_to_close(sock)
    statuses = [int(answer[i + 9 : i + 12]) for i in _starts(answer, b"HTTP/1.1 ")]
    assert statuses == [200, 200, 200]
    assert b'"body_length":200000' in answer


def _trickle_until_closed(
    sock: socket.socket, read: int, within: float, pause: float = 0.0
) -> bytes:
    """Send a body byte whenever the socket takes one and read up to ``read`` bytes per
    turn (then sleep ``pause``), until the server closes; AssertionError if it is still
    open after ``within`` seconds (a bound on the wait, far above what the test needs,
    not a measured time)."""
    sock.setblocking(False)
    answer = b""
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        try:
            sock.send(b"x")
        except BlockingIOError:
            pass  # the server is not reading: fine, it is answering
        except OSError:
            pass  # it has shut its reading side: read on to its close
        ready, _, _ = select.select([sock], [], [], 0.01)
        if not ready:
            continue
        try:
            chunk = sock.recv(read)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            raise AssertionError(f"reset after {len(answer)} bytes") from None
        if not chunk:
            return answer
        answer += chunk
        time.sleep(pause)
    raise AssertionError("the connection stayed open while the body trickled")


def test_an_answer_before_the_body_is_whole_bounds_the_rest(edge: ProxyFactory) -> None:
    """A 405 to a 100 MB upload that the client trickles: the rest is read and dropped
    for REQUEST_HEAD_TIMEOUT at most, then the connection closes, the answer whole. It
    stayed open past every timer and the connection cap's eviction (helper-49 finding 3)."""
    with edge(request_head_timeout=1.0, keep_alive_seconds=30) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                b"POST /files/4k-upload.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n"
                b"\r\nabc"
            )
            answer = _trickle_until_closed(sock, 65536, within=15)
    assert _status(answer) == 405
    assert answer.endswith(b"\r\n\r\nGET or HEAD\n")


def test_a_large_early_answer_to_a_client_still_sending_arrives_whole(
    edge: ProxyFactory,
) -> None:
    """The bound above waits until the answer is out: a slow reader still uploading gets
    every byte, then the close (helper-50: a reset cut it at 7.1 of 8 MiB)."""
    name = "8m-early-big.bin"
    with edge(request_head_timeout=1.0, keep_alive_seconds=30) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                f"GET /files/{name} HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n"
                "\r\nabc".encode()
            )
            # ~1.6 MB/s: the socket buffers still hold MiBs of it well after the bound.
            answer = _trickle_until_closed(sock, 16384, within=90, pause=0.01)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert _status(head) == 200
    assert body == expected_bytes(name)


def test_an_early_answer_whose_body_then_ends_keeps_the_connection(edge: ProxyFactory) -> None:
    """The common case: the rest of the body arrives in time, and the connection serves
    the next request."""
    with edge(request_head_timeout=5.0) as url:
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(
                b"POST /files/4k-upload.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n"
            )
            time.sleep(0.3)  # answered meanwhile
            sock.sendall(b"y" * 300_000 + b"GET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(1.5)  # past the keep-alive of nothing: the connection is still in use
            sock.sendall(b"GET /echo/last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = _read_to_close(sock)
    statuses = [int(answer[i + 9 : i + 12]) for i in _starts(answer, b"HTTP/1.1 ")]
    assert statuses == [405, 200, 200]
