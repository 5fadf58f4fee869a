"""nginx's send_timeout: a client that takes none of its response for SEND_TIMEOUT seconds
is reset, counted and logged; a client that reads slowly but steadily is not cut (a small
receive buffer here: a large one announces no window until 1/16 of it is free).

Before, a client that asked for a large answer and never read it held its connection, and
what the response held with it, for as long as it liked (helper-42): three of them filled
a MAX_CLIENT_CONNECTIONS of 3. Both answer paths of the httptools protocol (its fast
path, and the ASGI path with ``fast_path=False``) and the h11 protocol."""

from __future__ import annotations

import io
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.edge.h11server import H11EdgeProtocol
from app.edge.httpserver import HttpProtocol
from app.main import create_app
from app.ops.accesslog import SEND_TIMEOUT_CUT
from bench.origin import expected_bytes
from settings import Settings
from tests.conftest import Origin
from tests.servers import run_asgi_in_thread
from tests.test_fasthit import _address, _lines_for, _read_response, fast_hits, request
from tests.waiting import wait_for

SIZE = 16 * 1024 * 1024  # one slice, far more than the sockets on both sides hold
SEND_TIMEOUT = 1.0
# Clients that read the head and nothing more: request id, extra header, SO_RCVBUF
# (0: the kernel's default, autotuned).
STUCK_CLIENTS = (
    ("stuck", "", 4096),
    ("stuck-close", "Connection: close\r\n", 4096),
    ("stuck-wide", "", 0),
)


def _drained_to_close(sock: socket.socket) -> int:
    """Read until the server closes (EOF or reset); the bytes read."""
    got = 0
    sock.settimeout(30)
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except ConnectionResetError:
        pass
    return got


def _logged(stream: io.StringIO, rid: str) -> Callable[[], bool]:
    return lambda: _lines_for(stream, rid) != []


# (protocol class, fast path on): the fast path exists in the httptools class only.
EDGES = {
    "fast-path": (HttpProtocol, True),
    "asgi-path": (HttpProtocol, False),
    "h11": (H11EdgeProtocol, False),
}


@contextmanager
def served(origin: Origin, edge: str, **overrides: Any) -> Iterator[tuple[str, Any]]:
    """A proxy on ``edge``'s protocol, its app at hand."""
    protocol, fast_path = EDGES[edge]
    settings = Settings(upstream_address=origin.url, fast_path=fast_path, **overrides)
    app = create_app(settings, configure_logs=False)
    with run_asgi_in_thread(
        app, proxy_headers=False, date_header=False, http=protocol, timeout_keep_alive=5
    ) as url:
        yield url, app


@pytest.mark.parametrize("edge", list(EDGES))
def test_a_client_that_takes_nothing_is_closed_and_a_slow_one_is_not(
    origin: Origin, edge: str
) -> None:
    fast_path = EDGES[edge][1]
    name = f"16m-send-timeout-{edge}.bin"
    path = "/files/" + name
    stream = io.StringIO()
    real_stdout, sys.stdout = sys.stdout, stream
    try:
        with served(
            origin, edge, slice_size=SIZE, access_log_buffer_bytes=0, send_timeout=SEND_TIMEOUT
        ) as (url, app):
            assert len(httpx.get(url + path, timeout=30).content) == SIZE  # cached now
            hits_before = fast_hits(app)

            # A client that reads slowly, for several send timeouts, then the rest.
            with socket.create_connection(_address(url), timeout=30) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                sock.sendall(request(path, rid="slow"))
                buffer = bytearray()
                reading_until = time.monotonic() + 4 * SEND_TIMEOUT
                while time.monotonic() < reading_until:
                    buffer += sock.recv(32 * 1024)
                    time.sleep(SEND_TIMEOUT / 4)
                whole = _read_response(sock, buffer, head_only=False)
                assert whole.startswith(b"HTTP/1.1 200")
                assert whole.endswith(expected_bytes(name))

            # Clients that take the head and nothing more; the second asked for the
            # connection to close after the answer (the transport is closing meanwhile);
            # the third keeps the kernel's own receive buffer, which goes on taking bytes
            # for a while after the transport paused.
            stuck_for: dict[str, float] = {}
            received: dict[str, int] = {}
            for rid, extra, receive_buffer in STUCK_CLIENTS:
                with socket.create_connection(_address(url), timeout=30) as sock:
                    if receive_buffer:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
                    sock.sendall(request(path, rid=rid, extra=extra))
                    first = sock.recv(4096)
                    assert first.startswith(b"HTTP/1.1 200")
                    head_at = time.monotonic()
                    wait_for(_logged(stream, rid), f"{rid}'s line")
                    stuck_for[rid] = time.monotonic() - head_at
                    received[rid] = len(first) + _drained_to_close(sock)
                    assert received[rid] < SIZE  # closed, short of the body
            answered_fast = fast_hits(app) - hits_before
            metrics = httpx.get(url + "/_slicecache/metrics").text
    finally:
        sys.stdout = real_stdout
    assert answered_fast == (4 if fast_path else 0)
    (slow,) = _lines_for(stream, "slow")
    assert slow["bytes"] == SIZE and "aborted" not in slow
    for rid, _extra, _receive_buffer in STUCK_CLIENTS:
        (stuck,) = _lines_for(stream, rid)
        assert stuck["aborted"] == SEND_TIMEOUT_CUT and stuck["bytes"] < SIZE
        # Logged: the body bytes that reached the client's host, not those handed to the
        # kernel, whose send queue the reset discarded (helper-74: 4.1 MB logged for
        # 128 KB received). ``received`` has the head too.
        assert received[rid] - 4096 <= stuck["bytes"] <= received[rid], (rid, received)
        # Cut one send timeout after the client stopped taking bytes, give or take the
        # timer's granularity: not two (the kernel's last gulp, right after the transport
        # paused, counted as progress and re-armed a whole period; helper-73).
        # The lower bound has some slack: the server's timer starts when its transport
        # paused, which on a loaded machine can be before this client's recv returned.
        assert 0.9 * SEND_TIMEOUT <= stuck_for[rid] < 1.5 * SEND_TIMEOUT, stuck_for
    assert "slicecache_client_send_timeouts_total 3.0" in metrics
    assert 'slicecache_responses_incomplete_total{ended_by="client"} 3.0' in metrics


@pytest.mark.parametrize("linger", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("edge", list(EDGES))
def test_a_client_that_leaves_right_after_its_request_is_not_logged_as_served(
    origin: Origin, edge: str, linger: bool
) -> None:
    """The client sends its request and closes at once: with a FIN (its kernel resets the
    connection when the answer arrives) or a reset. The answer, handed to the transport in
    one piece, was logged as whole when the reset came before the answer was written (the
    fast path), or before the access log looked at the transport (the ASGI path), and on
    h11 always (helper-44, helper-45): it must be a cut, its held bytes not counted."""
    name = f"16m-leaves-{edge}-{linger}.bin"
    path = "/files/" + name
    stream = io.StringIO()
    real_stdout, sys.stdout = sys.stdout, stream
    rids = [f"leaves-{attempt}" for attempt in range(3)]
    try:
        with served(origin, edge, slice_size=SIZE, access_log_buffer_bytes=0) as (url, _app):
            assert len(httpx.get(url + path, timeout=30).content) == SIZE  # cached now
            for rid in rids:
                with socket.create_connection(_address(url), timeout=30) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    if linger:
                        reset = struct.pack("ii", 1, 0)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
                    sock.sendall(request(path, rid=rid, extra="Connection: close\r\n"))
            for rid in rids:
                wait_for(_logged(stream, rid), f"{rid}'s line")
            metrics = httpx.get(url + "/_slicecache/metrics").text
    finally:
        sys.stdout = real_stdout
    for rid in rids:
        (line,) = _lines_for(stream, rid)
        assert line["bytes"] < SIZE and line["aborted"] == "client disconnected", repr(line)
    assert 'slicecache_responses_incomplete_total{ended_by="client"} 3.0' in metrics


@pytest.mark.parametrize("edge", list(EDGES))
def test_a_half_closed_client_gets_its_whole_answer(origin: Origin, edge: str) -> None:
    """The client sends its request, then shuts its side down and reads: the whole answer,
    then the close (on h11 the transport closed at the EOF and cut it; helper-45)."""
    name = f"16m-half-{edge}.bin"
    path = "/files/" + name
    with served(origin, edge, slice_size=SIZE) as (url, _app):
        assert len(httpx.get(url + path, timeout=30).content) == SIZE  # cached now
        for _ in range(3):
            with socket.create_connection(_address(url), timeout=30) as sock:
                sock.sendall(request(path))
                sock.shutdown(socket.SHUT_WR)
                buffer = bytearray()
                whole = _read_response(sock, buffer, head_only=False)
                assert whole.endswith(expected_bytes(name))
                assert sock.recv(1) == b"" and not buffer  # then the close, nothing more
