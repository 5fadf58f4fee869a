"""The edge against attacks found from outside: pipelining, dot segments, trickled preludes.

Pipelined requests in front of a refused one: every request before it gets its own answer.

HTTP/1.1 answers pipelined requests in order, so the client pairs the n-th answer with its
n-th request. A refusal (400, 414, 431) of a later head must therefore wait until every
request parsed before it has been answered: written at once, it takes the place of a valid
request's answer (the client believes its GET failed), and the requests queued behind the
running one are never served.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import Origin, ProxyFactory
from tests.test_edge import RawOrigin
from tests.test_operations import _env, _free_port


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _send_and_read_all(url: str, data: bytes, *, timeout: float = 20.0) -> bytes:
    """Send ``data`` whole and read until the server closes the connection."""
    received = b""
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        sock.sendall(data)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


def _statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d\d\d) ", answer)]


# A slow first answer (the origin waits) makes sure the refused head is parsed while a
# response is still running, the case that went wrong.
SLOW = b"GET /files/1k.bin?latency_ms=300 HTTP/1.1\r\nHost: t\r\n\r\n"
QUICK = b"GET /files/1k.bin?q HTTP/1.1\r\nHost: t\r\n\r\n"
OVERSIZED_FIELD = b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
OVERSIZED_TARGET = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
MALFORMED = b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n"


@pytest.mark.parametrize(
    ("refused", "status"),
    [(OVERSIZED_FIELD, 431), (OVERSIZED_TARGET, 414), (MALFORMED, 400)],
    ids=["431", "414", "400"],
)
@pytest.mark.parametrize("valid", [[SLOW], [SLOW, QUICK], [SLOW, QUICK, QUICK]], ids=len)
def test_a_refused_pipelined_head_is_answered_after_the_requests_before_it(
    proxy: ProxyFactory, valid: list[bytes], refused: bytes, status: int
) -> None:
    with proxy(enable_cache=False, max_header_bytes=65536, max_request_target_bytes=8192) as url:
        answer = _send_and_read_all(url, b"".join(valid) + refused)
        assert _statuses(answer) == [200] * len(valid) + [status], answer[-400:]
        # The refusal ends the connection; the server still serves a new one.
        assert _statuses(
            _send_and_read_all(url, QUICK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        ) == [200]


def _echoed_raw_path(url: str, target: bytes, extra: bytes = b"") -> str:
    answer = _send_and_read_all(
        url, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"Connection: close\r\n\r\n"
    )
    assert _statuses(answer)[:1] == [200], answer[:300]
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    return str(echoed["raw_path"]) + (f"?{echoed['query']}" if echoed["query"] else "")


@pytest.mark.parametrize(
    "path",
    [
        "/echo/./x",
        "/echo/a/../b",
        "/echo/a/..",
        "/echo//x/./y",
        "/echo/x/../../y",
        "/echo/.?q=../x",
    ],
)
@pytest.mark.parametrize("cache", [False, True], ids=["nocache", "cache"])
def test_dot_segments_reach_the_origin_as_sent(proxy: ProxyFactory, path: str, cache: bool) -> None:
    """Routing, slice patterns and the cache key use the target as sent: so must the origin.

    A proxy that resolves ``..`` before forwarding answers ``/public/../_slicecache/x`` or
    ``/x/../private`` with another path's bytes than the one it routed and keyed: what a
    filter in front (or the admin check here) looked at is not what the origin serves.
    """
    with proxy(enable_cache=cache) as url:
        assert _echoed_raw_path(url, path.encode()) == path


def test_empty_lines_trickled_between_requests_do_not_hold_the_connection(
    proxy: ProxyFactory,
) -> None:
    """RFC 9112 2.2 lets a server skip CRLFs before a request line; trickled, they must not
    stop the clock: each byte used to cancel the keep-alive timeout, and no head timer ran
    until a request line began, so one byte a second held the connection forever."""
    with proxy(enable_cache=False, request_head_timeout=1.0) as url:
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            sock.settimeout(0.2)
            closed = False
            # The head timeout is 1 s and uvicorn's keep-alive 5 s: far past both.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not closed:
                try:
                    sock.send(b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                try:
                    while chunk := sock.recv(65536):
                        answer += chunk
                    closed = True
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    closed = True
            assert closed, "a connection trickling empty lines was held open"


def test_more_than_a_hundred_fields_get_431_even_under_the_byte_limit(proxy: ProxyFactory) -> None:
    """Each field is a Python callback on the event loop: 64 KiB of two-byte fields cost one
    head about 15 ms of CPU (35 times one 64 KiB value), so a client sending them in a loop
    held up every other client's hits. A field count caps that, as Apache and HAProxy do."""
    with proxy(enable_cache=False, max_header_bytes=65536) as url:

        def status_with(count: int) -> list[int]:
            fields = b"".join(b"A%d: b\r\n" % i for i in range(count))
            head = b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            return _statuses(_send_and_read_all(url, head + fields + b"\r\n"))[:1]

        assert status_with(98) == [200]  # with Host and Connection: 100 fields
        assert status_with(99) == [431]
        assert status_with(10000) == [431]  # 80 KiB: the byte limit would have said so too
        assert status_with(8000) == [431]  # ~62 KiB: only the count refuses it


@pytest.mark.parametrize(
    "codings", [b"gzip, chunked", b"identity, chunked", b"x-custom, chunked", b"deflate,chunked"]
)
def test_a_transfer_coding_other_than_chunked_gets_501(
    proxy: ProxyFactory, origin: Origin, codings: bytes
) -> None:
    """RFC 9112 6.1: the parser removes only chunked; forwarded without the rest of the
    field, gzip-coded bytes reached the origin as a plain body (a silently changed message).
    A coding the proxy does not implement gets 501, as nginx answers."""
    body = b"5\r\nhello\r\n0\r\n\r\n"
    path = b"/echo/te-" + codings.replace(b", ", b"-").replace(b",", b"-")
    head = b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: " + codings
    with proxy(enable_cache=False) as url:
        answer = _send_and_read_all(url, head + b"\r\nConnection: close\r\n\r\n" + body)
    assert _statuses(answer)[:1] == [501], answer[:300]
    assert origin.requests_for(path.decode()) == []


@contextmanager
def _plain_uvicorn(
    origin: Origin, http: str = "h11"
) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    """``uvicorn app.main:app --http <http>``, its stdout lines collected until it listens."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--http", http, "--port", str(port)],
        env=_env(upstream_address=origin.url, request_head_timeout="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running" in line:  # listening (startup completes before)
                break
        yield process, port, lines
    finally:
        process.kill()
        process.wait(10)


def test_plain_uvicorn_with_h11_refuses_an_oversized_head_early_and_dated(origin: Origin) -> None:
    """``--http h11`` (uvicorn's own flag wins) runs the h11 edge protocol: no warning that
    the protections are off, and a head past the limit gets 431 with Date while the
    client is still sending (h11's bare 400 had no Date and came only at h11's own cap)."""
    with _plain_uvicorn(origin) as (_, port, lines):
        assert not any("no request head timeout" in line for line in lines), lines
        head = b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (200 * 1024)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(head)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = sock.recv(65536)
        assert _statuses(answer) == [431], answer[:200]
        assert b"\r\ndate: " in answer.lower()


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_plain_uvicorn_cuts_off_a_trickled_head_after_the_set_timeout(
    origin: Origin, http: str
) -> None:
    """SLICECACHE_REQUEST_HEAD_TIMEOUT (1 s here) holds under plain uvicorn with either
    parser: the limits used to be read from ``config.app``, which plain uvicorn leaves as
    the import string, so the defaults (30 s) applied whatever the settings said."""
    with _plain_uvicorn(origin, http) as (_, port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /files/1k.bin HTTP/1.1\r\n")
            sock.settimeout(0.2)
            closed = False
            deadline = time.monotonic() + 20  # the head timeout is 1 s, the default 30 s
            while time.monotonic() < deadline and not closed:
                try:
                    sock.send(b"X")
                    closed = sock.recv(65536) == b""
                except TimeoutError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            assert closed


def test_transfer_encoding_in_an_http_1_0_request_gets_400(
    proxy: ProxyFactory, origin: Origin
) -> None:
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing. A hop
    in front that reads HTTP/1.0 without chunked framing sees the body as a second request:
    refusing it (as nginx does) keeps the two views of the stream from splitting."""
    path = b"/echo/te-http-1-0"
    request = (
        b"POST " + path + b" HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    with proxy(enable_cache=False) as url:
        answer = _send_and_read_all(url, request)
    assert _statuses(answer)[:1] == [400], answer[:300]
    assert origin.requests_for(path.decode()) == []


@pytest.mark.parametrize("length", [b"005", b"0005 ", b"\t05"])
def test_a_content_length_with_leading_zeros_reaches_the_origin_canonical(
    proxy: ProxyFactory, length: bytes
) -> None:
    """An origin that reads "010" as octal (C's strtol with base 0) would take 8 of the 10
    bytes and parse the rest as the next request on the pooled connection."""
    with proxy(enable_cache=False) as url:
        answer = _send_and_read_all(
            url,
            b"POST /echo/cl-zeros HTTP/1.1\r\nHost: t\r\nContent-Length: "
            + length
            + b"\r\nConnection: close\r\n\r\nhello",
        )
    assert _statuses(answer)[:1] == [200], answer[:300]
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert echoed["body_length"] == 5
    assert ["content-length", "5"] in echoed["headers"]


REQUESTS_THROUGH_EVERY_PATH = [
    ({"enable_cache": False}, b"GET"),
    ({}, b"GET"),  # the sliced, cached path
    ({}, b"POST"),  # pass-through
    ({}, b"HEAD"),
]


def _through_raw_origin(proxy: ProxyFactory, answer: bytes) -> list[tuple[str, bytes]]:
    """Each path's answer to one request sent to an origin that answers ``answer``."""
    origin = RawOrigin(answer)
    answers = []
    try:
        for settings, method in REQUESTS_THROUGH_EVERY_PATH:
            with proxy(upstream_address=origin.url, **settings) as url:
                request = b"%s /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n" % method
                answer_bytes = _send_and_read_all(url, request + b"Connection: close\r\n\r\n")
                answers.append((f"{settings} {method.decode()}", answer_bytes))
    finally:
        origin.close()
    return answers


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb", b"\x1b[31mred"])
def test_an_origin_header_value_with_a_control_character_is_a_502(
    proxy: ProxyFactory, value: bytes
) -> None:
    """RFC 9110 5.5: no CTL but HTAB in a field value. aiohttp's parser let them through,
    then uvicorn refused to write them: a traceback and a connection closed with no answer
    at all (its 500 came after the start, another RuntimeError)."""
    answer = b"HTTP/1.1 200 OK\r\nX-Odd: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
    for where, received in _through_raw_origin(proxy, answer):
        assert _statuses(received)[:1] == [502], (where, received[:300])


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "x"\r\n\r\n',
    ],
    ids=["204", "304"],
)
def test_a_bodiless_origin_status_with_a_content_length_is_relayed_cleanly(
    proxy: ProxyFactory, answer: bytes
) -> None:
    """A 304 may carry the Content-Length of the selected representation (RFC 9110 8.6),
    and origins send one with a 204 too. Relayed as is, uvicorn waited for that many body
    bytes, raised "Response content shorter than Content-Length" and logged a traceback."""
    status = int(answer[9:12])
    for where, received in _through_raw_origin(proxy, answer):
        statuses = _statuses(received)[:1]
        # The cached GET path refuses a 204/304 to its range request as a bad gateway.
        assert statuses in ([status], [502]), (where, received[:300])
        head = received.partition(b"\r\n\r\n")[0].lower()
        if statuses == [status]:
            # Dropped: uvicorn cannot write a Content-Length it writes no body for.
            assert b"content-length" not in head, (where, head)


class InterimThenSilentOrigin:
    """Answers every request with a 100 Continue, then says nothing more until closed."""

    def __init__(self) -> None:
        self.done = threading.Event()
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
                self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                origin.done.wait(60)

        return Handler

    def close(self) -> None:
        self.done.set()
        self.server.shutdown()
        self.server.server_close()


def test_an_origin_silent_after_an_interim_response_times_out(proxy: ProxyFactory) -> None:
    """READ_TIMEOUT bounds the origin's silence mid-response; aiohttp drops its read timer
    once a message (here the 100) is parsed, so the wait for the final response had no
    bound at all: the request hung as long as the origin kept the connection open."""
    origin = InterimThenSilentOrigin()
    try:
        for settings, method in REQUESTS_THROUGH_EVERY_PATH[:3]:
            with proxy(
                upstream_address=origin.url,
                read_timeout=1.0,
                max_retries=0,
                slice_wait_timeout=60.0,
                **settings,
            ) as url:
                request = b"%s /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n" % method
                # The origin holds for 60 s: an answer before then is the timeout's.
                received = _send_and_read_all(
                    url, request + b"Connection: close\r\n\r\n", timeout=50
                )
                assert _statuses(received)[:1] == [504], (settings, method, received[:300])
    finally:
        origin.close()


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_every_refused_head_is_counted_and_logged_once_per_interval(
    proxy: ProxyFactory, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refusal never reaches the app (no access line, no request metric): the edge
    counts each one by status and logs one line per status per interval, with the client
    and the cause, so a flood of bad heads is visible without a log line each."""

    from app.edge.h11server import H11EdgeProtocol
    from app.edge.httpserver import HttpProtocol

    kind = HttpProtocol if protocol == "httptools" else H11EdgeProtocol
    malformed = b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n"
    too_large = b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    long_target = b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    caplog.set_level("WARNING", logger="slicecache.edge")
    with proxy(
        http_protocol=kind,
        enable_cache=False,
        max_header_bytes=2048,
        max_request_target_bytes=1024,
        request_head_timeout=0.5,
        warning_interval_seconds=3600,
    ) as url:
        for head, status, times in (
            (malformed, 400, 4),
            (too_large, 431, 3),
            (long_target, 414, 2),
        ):
            for _ in range(times):
                assert _statuses(_send_and_read_all(url, head))[:1] == [status]
        trickled = _send_and_read_all(url, b"GET /files/1k.bin HTTP/1.1\r\nHost: t\r\n")
        assert _statuses(trickled) == [408]
        metrics = httpx.get(url + "/_slicecache/metrics").text
    counted = dict(re.findall(r'slicecache_edge_refusals_total\{status="(\d+)"\} (\S+)', metrics))
    expected = {"400": "4.0", "431": "3.0", "414": "2.0", "408": "1.0"}
    if protocol == "h11":
        # h11 parses a head that arrives whole, past its limit for an incomplete one: the
        # app refuses those (414/431 with an access line and a request metric).
        del expected["431"], expected["414"]
    assert counted == expected
    lines = [r for r in caplog.records if r.name == "slicecache.edge"]
    logged = sorted(str(getattr(r, "fields", {})["status"]) for r in lines)
    assert logged == sorted(expected), [r.getMessage() for r in lines]
    assert all("127.0.0.1:" in r.getMessage() for r in lines)


def test_a_request_pipelined_behind_an_ignored_upgrade_is_answered(
    proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9110 7.8: the proxy answers an Upgrade request (curl --http2 sends Upgrade: h2c)
    in HTTP/1.1 and goes on in it. A request pipelined behind it in the same read was
    dropped (the client waited for an answer that never came); and each such request
    logged two warnings. Now the next request is answered and the upgrade noted once per
    interval."""
    upgrade = (
        b"GET /files/1k.bin?u HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    caplog.set_level("INFO", logger="slicecache.edge")
    with proxy(enable_cache=False, warning_interval_seconds=3600) as url:
        answer = _send_and_read_all(
            url, upgrade * 3 + QUICK + b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        metrics = httpx.get(url + "/_slicecache/metrics").text
    assert _statuses(answer) == [200, 200, 200, 200, 404], answer[:300]
    assert 'slicecache_edge_ignored_total{what="upgrade"} 3.0' in metrics
    noted = [
        r for r in caplog.records if getattr(r, "fields", {}).get("event") == "upgrade_ignored"
    ]
    assert len(noted) == 1 and getattr(noted[0], "fields", {})["protocol"] == "h2c"


def test_a_bad_chunk_in_a_running_requests_body_gets_400_and_frees_the_origin(
    proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The body of the request being answered cannot be parsed: it will never complete.
    The proxy waited for its response (as for a bad pipelined head) while the app waited
    for the body, holding an origin connection: a few such clients held the whole pool and
    every miss behind them hung. Now each gets a 400 at once and the origin is let go."""
    bad = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ZZZ\r\nabc\r\n0\r\n\r\n"
    )
    caplog.set_level("WARNING")
    with proxy(upstream_pool_size=2) as url:
        held = []
        try:
            for _ in range(4):  # twice the pool, each connection left open by its client
                sock = socket.create_connection(_address(url), timeout=20)
                sock.sendall(bad)
                held.append(sock)
            for sock in held:
                answer = sock.recv(65536)
                assert _statuses(answer) == [400], answer[:200]
            miss = _send_and_read_all(
                url, b"GET /files/1k.bin?after-bad HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            assert _statuses(miss) == [200]
            metrics = _send_and_read_all(
                url, b"GET /_slicecache/metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            ).decode("latin-1")
        finally:
            for sock in held:
                sock.close()
    # The client's fault, not the origin's: no origin error counted or logged for it.
    assert 'slicecache_origin_responses_total{status_class="error"}' not in metrics
    assert not [r for r in caplog.records if "ClientGone" in r.getMessage()]
    assert 'slicecache_edge_refusals_total{status="400"} 4.0' in metrics


def test_a_request_body_that_stops_arriving_gets_408_and_frees_the_origin(
    proxy: ProxyFactory,
) -> None:
    """A client that sends a few bytes of a body and goes quiet held its origin connection
    for as long as it liked (no timeout on a body): a pool's worth of them stopped every
    miss. A pause longer than REQUEST_HEAD_TIMEOUT inside a body now gets 408 (nginx's
    client_body_timeout) and the app lets go of the origin request; a body that keeps
    coming, however slowly, is not cut."""
    stalled = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc"
    with proxy(upstream_pool_size=2, request_head_timeout=1.0) as url:
        held = []
        try:
            for _ in range(4):  # twice the pool
                sock = socket.create_connection(_address(url), timeout=20)
                sock.sendall(stalled)
                held.append(sock)
            for sock in held:
                assert _statuses(sock.recv(65536)) == [408]
            miss = _send_and_read_all(
                url,
                b"GET /files/1k.bin?after-stall HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            assert _statuses(miss) == [200]
        finally:
            for sock in held:
                sock.close()
        # 100 bytes, 10 at a time every 0.3 s (3 s in all, each pause under the timeout).
        with socket.create_connection(_address(url), timeout=20) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
            for _ in range(10):
                time.sleep(0.3)
                sock.sendall(b"x" * 10)
            assert _statuses(sock.recv(65536)) == [200]
