"""Fuzzed request heads against a real proxy: never a 500, never a hang, never a wrong key.

Bounded and derandomized (the same examples every run) so ``make test`` stays quick and
repeatable; ``HYPOTHESIS_PROFILE``-style exploration can raise ``max_examples`` locally.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.context import RequestContext, RequestLog
from app.edge.headers import parse_host
from app.edge.httpserver import HttpProtocol
from app.httpcache.invalidation import normalize_uri
from app.main import create_app
from app.upstream.client import UpstreamClient, UpstreamTimeouts
from settings import Settings
from tests.conftest import Origin
from tests.servers import run_asgi_in_thread

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LIMITS = {"max_header_bytes": 8192, "max_request_target_bytes": 1024}


@pytest.fixture(scope="module", params=[False, True], ids=["origin-host", "preserve-host"])
def fuzz_proxy(origin: Origin, request: pytest.FixtureRequest) -> Iterator[str]:
    app = create_app(
        Settings(
            upstream_address=origin.url,
            preserve_host=request.param,
            max_header_bytes=LIMITS["max_header_bytes"],
            max_request_target_bytes=LIMITS["max_request_target_bytes"],
        ),
        configure_logs=False,
    )
    with run_asgi_in_thread(app, proxy_headers=False, date_header=False, http=HttpProtocol) as url:
        yield url


def _read_response(sock: socket.socket, method: bytes) -> tuple[int, bytes]:
    """(status, raw) of one response, framed as HTTP/1.1 frames it; 0 if the server closed."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            return (int(received[9:12]) if received.startswith(b"HTTP/1.1 ") else 0), received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head[9:12])
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if method == b"HEAD" or status in (204, 304):
        return status, received
    if b"content-length" in fields:
        remaining = int(fields[b"content-length"]) - len(body)
        while remaining > 0:
            chunk = sock.recv(65536)
            if not chunk:
                break
            remaining -= len(chunk)
        return status, received
    while True:  # chunked, or delimited by the close
        if fields.get(b"transfer-encoding") == b"chunked" and received.endswith(b"0\r\n\r\n"):
            return status, received
        chunk = sock.recv(65536)
        if not chunk:
            return status, received
        received += chunk


def _send(url: str, request: bytes, method: bytes) -> int:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early: the answer is still readable, or the close is the answer
        try:
            status, raw = _read_response(sock, method)
        except ConnectionResetError:
            return 0
    assert status != 500, raw[:500]
    return status


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
field_value = st.one_of(
    st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)),
    st.sampled_from([b"caf\xe9", b"\xff\xfe", "naïve ☃".encode(), b"a\tb", b""]),
    st.integers(0, 12000).map(lambda n: b"v" * n),
)
host_value = st.one_of(
    st.sampled_from(
        [
            b"t",
            b"victim.example",
            b"victim.example#",
            b"victim.example/x#",
            b"127.0.0.1:1/f#",
            b"[::1]:80",
            b"[::1",
            b"a@b",
            b"h:99999",
            b"h:",
            b"",
            b"H\xe9",
            b"%41.example",
        ]
    ),
    st.binary(max_size=30).map(lambda b: bytes(c for c in b if c >= 0x21 and c != 0x7F)),
)
content_length = st.sampled_from(
    [
        None,
        (b"3", b"abc"),
        (b"3 ", b"abc"),
        (b" 3", b"abc"),
        (b"3\t", b"abc"),
        (b"03", b"abc"),
        (b"+3", b"abc"),
        (b"abc", b""),
        (b"-1", b""),
        (b"3, 3", b"abc"),
        (b"99999999999999999999999", b""),
        (b"0", b""),
        "chunked",
        "chunked+length",
    ]
)
target = st.one_of(
    st.sampled_from(
        [b"/files/1k.bin", b"/echo/fuzz", b"/%5fslicecache/stats", b"/_slicecache/healthz"]
    ),
    st.binary(max_size=60).map(lambda b: b"/" + bytes(c for c in b if 0x21 <= c < 0x7F)),
    st.integers(900, 1200).map(lambda n: b"/echo/" + b"a" * n),
)


@FUZZ
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PURGE"]),
    path=target,
    version=st.sampled_from([b"1.1", b"1.1", b"1.0"]),
    hosts=st.lists(host_value, max_size=2),
    fields=st.lists(st.tuples(token, field_value), max_size=6),
    length=content_length,
)
def test_fuzzed_heads_never_get_a_500_or_hang(
    fuzz_proxy: str,
    method: bytes,
    path: bytes,
    version: bytes,
    hosts: list[bytes],
    fields: list[tuple[str, bytes]],
    length: tuple[bytes, bytes] | str | None,
) -> None:
    lines = [method + b" " + path + b" HTTP/" + version]
    lines += [b"Host: " + host for host in hosts]
    lines += [name.encode() + b": " + value for name, value in fields]
    body = b""
    if length == "chunked" or length == "chunked+length":
        lines.append(b"Transfer-Encoding: chunked")
        if length == "chunked+length":
            lines.append(b"Content-Length: 5")
        body = b"3\r\nabc\r\n0\r\n\r\n"
    elif isinstance(length, tuple):
        lines.append(b"Content-Length: " + length[0])
        body = length[1]
    lines.append(b"Connection: close")
    status = _send(fuzz_proxy, b"\r\n".join(lines) + b"\r\n\r\n" + body, method)
    head_bytes = sum(len(line) + 2 for line in lines[1:])
    if len(path) > LIMITS["max_request_target_bytes"]:
        assert status in (0, 414)
    elif head_bytes > LIMITS["max_header_bytes"] + 64:
        assert status in (0, 400, 431)
    # The proxy is still fine.
    assert _send(fuzz_proxy, b"GET /_slicecache/healthz HTTP/1.1\r\nHost: t\r\n\r\n", b"GET") == 200


@FUZZ
@given(value=st.text(max_size=40))
def test_a_parsed_host_is_exactly_the_authority_a_url_parser_sees(value: str) -> None:
    parsed = parse_host(value)
    if parsed is None:
        return
    host, port = parsed
    assert not set(host) & set("/?#@ \\")
    parts = urlsplit(f"http://{value}/path")
    assert parts.path == "/path"
    assert (parts.hostname or "") == host.strip("[]")
    assert parts.port == port


@FUZZ
@given(
    host=st.one_of(
        st.none(), st.sampled_from(["victim.example", "V.example:8080", "[::1]:81", "h:"])
    ),
    path=st.binary(min_size=1, max_size=30).map(
        lambda b: "/" + bytes(c for c in b if 0x21 <= c < 0x7F and c not in b"?#").decode()
    ),
    query=st.one_of(st.just(""), st.text(alphabet="abc=&%/?", max_size=10)),
)
def test_object_keys_from_parts_match_the_normalized_url(
    host: str | None, path: str, query: str
) -> None:
    """For every valid request the key is what it was before: ``normalize_uri`` of the URL."""
    runtime = create_app(
        Settings(upstream_address="http://Origin.example:8081", preserve_host=True),
        configure_logs=False,
    ).state.runtime
    runtime.upstream = UpstreamClient(
        "http://origin.example:8081",
        UpstreamTimeouts(connect=1, read=1, total=None),
        httpx.MockTransport(lambda request: httpx.Response(200)),
    )
    target = path + (f"?{query}" if query else "")
    ctx = RequestContext(
        method="GET",
        target=target,
        path=path,
        headers=[("host", host)] if host is not None else [],
        client_ip=None,
        scheme="http",
        log=RequestLog(request_id="-"),
    )
    authority = host if host else "origin.example:8081"
    assert runtime.object_key(ctx) == normalize_uri(f"http://{authority}{target}")
