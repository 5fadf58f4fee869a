"""The pass-through proxy, end to end: real origin, real app, real sockets on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from urllib.parse import urlencode

import httpx
import pytest

from bench.origin import expected_bytes, expected_sha256
from tests.conftest import Origin, ProxyFactory, ServerErrors


@pytest.mark.parametrize("name", ["0.bin", "1.bin", "1m.bin", "100m.bin"])
def test_bodies_arrive_byte_exact(proxy: ProxyFactory, name: str) -> None:
    # Caching off: every GET takes the pass-through path.
    with proxy(enable_cache=False) as url, httpx.stream("GET", f"{url}/files/{name}") as r:
        assert r.status_code == 200
        digest = hashlib.sha256()
        for chunk in r.iter_raw():
            digest.update(chunk)
        assert r.headers["content-length"] == str(int(r.headers["content-length"]))
        assert "transfer-encoding" not in r.headers  # the length was passed through
    assert digest.hexdigest() == expected_sha256(name)


def test_query_status_and_repeated_headers_preserved(proxy: ProxyFactory) -> None:
    with proxy(enable_cache=False) as url:
        echoed = httpx.get(f"{url}/echo/a%20b?x=1&x=2&y=%2F&empty=").json()
        teapot = httpx.get(f"{url}/status/418")
        cookies = httpx.get(f"{url}/cookies")
    assert echoed["raw_path"] == "/echo/a%20b"
    assert echoed["query"] == "x=1&x=2&y=%2F&empty="
    assert teapot.status_code == 418
    assert len(cookies.headers.get_list("set-cookie")) == 2


def test_hop_by_hop_dropped_and_forwarding_headers_added(proxy: ProxyFactory) -> None:
    with proxy(enable_cache=False) as url:
        echoed = httpx.get(
            f"{url}/echo",
            headers={
                "Connection": "keep-alive, X-Secret-Hop",
                "X-Secret-Hop": "must not pass",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "X-End-To-End": "kept",
                "X-Forwarded-For": "203.0.113.7",
            },
        ).json()
        response = httpx.get(f"{url}/echo")
    sent = {name.lower(): value for name, value in echoed["headers"]}
    for hop in ("x-secret-hop", "keep-alive", "te", "proxy-authorization"):
        assert hop not in sent
    assert sent["x-end-to-end"] == "kept"
    assert sent["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"].startswith("127.0.0.1:")
    assert sent["via"].endswith("1.1 slicecache")
    assert response.headers["via"].endswith("1.1 slicecache")
    assert response.headers.get_list("date") and len(response.headers.get_list("date")) == 1


def test_host_is_the_origins_unless_preserved(proxy: ProxyFactory, origin: Origin) -> None:
    origin_host = origin.url.removeprefix("http://")
    with proxy(enable_cache=False) as url:
        default = httpx.get(f"{url}/echo", headers={"Host": "client.example"}).json()
    with proxy(enable_cache=False, preserve_host=True) as url:
        kept = httpx.get(f"{url}/echo", headers={"Host": "client.example"}).json()
    assert dict(default["headers"])["host"] == origin_host
    assert dict(kept["headers"])["host"] == "client.example"


def test_upload_streams_through(proxy: ProxyFactory) -> None:
    payload = os.urandom(8 * 1024 * 1024)

    def chunks():
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    with proxy(enable_cache=False) as url:
        echoed = httpx.put(f"{url}/echo/upload", content=chunks()).json()
        sized = httpx.post(f"{url}/echo/upload", content=payload).json()
    for result in (echoed, sized):
        assert result["body_length"] == len(payload)
        assert result["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert echoed["method"] == "PUT" and sized["method"] == "POST"


def test_a_relayed_answer_says_the_cache_was_bypassed(proxy: ProxyFactory) -> None:
    """X-Cache and Cache-Status (RFC 9211) on answers that never touch the cache, as on
    those served from it: by method (POST), and a GET with caching off (helper-73: the
    access line said BYPASS, the response said nothing)."""
    with proxy() as url:
        posted = httpx.post(f"{url}/echo/upload", content=b"x")
        teapot = httpx.post(f"{url}/status/418")
    with proxy(enable_cache=False) as url:
        got = httpx.get(f"{url}/files/1000.bin")
    for response in (posted, teapot, got):
        assert response.headers["x-cache"] == "BYPASS"
    assert posted.headers["cache-status"] == "slicecache; fwd=method; fwd-status=200"
    assert teapot.headers["cache-status"] == "slicecache; fwd=method; fwd-status=418"
    assert got.headers["cache-status"] == "slicecache; fwd=bypass; fwd-status=200"


def test_an_invalid_upstream_cache_status_line_is_dropped_relayed_or_stored(
    proxy: ProxyFactory,
) -> None:
    """An origin's Cache-Status lines that are no RFC 8941 list are left out, on a relayed
    answer and on a stored one (miss and hit): joined as they came, ours was swallowed
    into an unterminated string or inner list, or the whole field was invalid (helper-74,
    helper-75)."""
    lines = 'Broken; detail="open|(a b|Edge; hit, |Caf; detail="caf\xe9"|CDN; hit; ttl=30'
    query = "?" + urlencode({"cs": lines})
    with proxy(enable_cache=False) as url:
        relayed = httpx.get(f"{url}/files/1000-cs.bin{query}")
    with proxy() as url:
        missed = httpx.get(f"{url}/files/1000-cs.bin{query}")
        hit = httpx.get(f"{url}/files/1000-cs.bin{query}")
    assert relayed.headers["cache-status"] == (
        "CDN; hit; ttl=30, slicecache; fwd=bypass; fwd-status=200"
    )
    assert missed.headers["cache-status"].startswith("CDN; hit; ttl=30, slicecache; fwd=")
    assert hit.headers["cache-status"].startswith("CDN; hit; ttl=30, slicecache; hit")
    for response in (relayed, missed, hit):
        assert response.content == expected_bytes("1000-cs.bin")


def test_a_pooled_origin_connection_idle_past_the_read_timeout_is_reused_cleanly(
    proxy: ProxyFactory, origin: Origin
) -> None:
    """A body read with pauses (a client slower than the origin) ended with aiohttp's
    read timer re-armed after the body's end; idle in the pool past READ_TIMEOUT (below
    the pool's keep-alive), the connection then failed the next request at once with
    "read timeout" (helper-73: a 504 in 0.65 ms)."""
    read_timeout = 0.5
    with proxy(enable_cache=False, read_timeout=read_timeout, upstream_keepalive_seconds=10) as url:
        for attempt in range(3):
            with httpx.stream("GET", f"{url}/files/8m-idle-{attempt}.bin") as slow:
                time.sleep(0.2)  # the origin's bytes back up to the proxy's reads
                got = sum(len(chunk) for chunk in slow.iter_bytes())
            assert slow.status_code == 200 and got == 8 * 1024 * 1024
            time.sleep(2 * read_timeout)  # the connection idles in the pool
            again = httpx.get(f"{url}/files/1000-idle-{attempt}.bin")
            assert again.status_code == 200, (again.status_code, again.text)
            assert again.content == expected_bytes(f"1000-idle-{attempt}.bin")


def test_head_has_headers_and_no_body(proxy: ProxyFactory) -> None:
    with proxy(enable_cache=False) as url:
        response = httpx.head(f"{url}/files/1m.bin")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(1024 * 1024)
    assert response.content == b""


def _raw_exchange(url: str, request: bytes, then: bytes | None = None) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if then is not None:
            interim = sock.recv(65536)
            assert interim.startswith(b"HTTP/1.1 100"), interim
            sock.sendall(then)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_expect_100_continue_does_not_hang(proxy: ProxyFactory) -> None:
    body = b"x" * 1000
    with proxy(enable_cache=False) as url:
        head = (
            b"POST /echo/expect HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        answer = _raw_exchange(url, head, then=body)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 200")
    echoed = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert echoed["body_length"] == 1000
    assert "expect" not in {name.lower() for name, _ in echoed["headers"]}


def test_unreachable_origin_is_502(proxy: ProxyFactory) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        free_port = placeholder.getsockname()[1]
    with proxy(upstream_address=f"127.0.0.1:{free_port}") as url:
        response = httpx.get(f"{url}/files/1k.bin")
    assert response.status_code == 502
    assert "origin" in response.text and len(response.text) < 200


def test_origin_timeout_is_504(proxy: ProxyFactory) -> None:
    with proxy(enable_cache=False, read_timeout=0.3) as url:
        response = httpx.get(f"{url}/slow-headers?ms=3000")
    assert response.status_code == 504
    assert "Gateway Timeout" in response.text


@pytest.mark.parametrize("fault", ["reset", "short", "nolength,short"])
def test_origin_failure_mid_body_aborts_the_client(
    proxy: ProxyFactory, fault: str, server_errors: ServerErrors
) -> None:
    with proxy(enable_cache=False) as url:
        server_errors.watch()
        with (
            pytest.raises(httpx.TransportError),
            httpx.stream("GET", f"{url}/files/4m.bin?fault={fault}") as response,
        ):
            assert response.status_code == 200
            for _ in response.iter_raw():
                pass
    # The origin's failure is the transport's (rate-limited) warning; the cut response is
    # not also a server error line. (With "short" the test origin, in this process, leaves
    # its own response incomplete on purpose and uvicorn says so on the same logger.)
    if fault == "reset":
        assert server_errors() == []


def test_client_disconnect_closes_the_upstream_at_once(proxy: ProxyFactory, origin: Origin) -> None:
    path = "/files/200m-disconnect.bin"
    # 2 MB/s: the whole file would take 100 s; the origin must see us leave within seconds.
    with proxy(enable_cache=False) as url:
        with httpx.stream("GET", f"{url}{path}?bandwidth_mbps=2") as response:
            assert response.status_code == 200
            next(response.iter_raw())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            entries = origin.requests_for(path)
            if entries and entries[-1]["finished"]:
                break
            time.sleep(0.05)
    entries = origin.requests_for(path)
    assert entries, "the origin never saw the request"
    assert entries[-1]["finished"] and entries[-1]["client_left"], "upstream still open"
    assert entries[-1]["bytes_sent"] < 50 * 1024 * 1024


def test_admin_routes_are_never_forwarded(proxy: ProxyFactory, origin: Origin) -> None:
    # The origin (and its log) is shared by the session: only this test's requests count.
    origin.app.clear_log()
    with proxy() as url:
        assert httpx.get(f"{url}/_slicecache/healthz").status_code == 200
        assert httpx.get(f"{url}/_slicecache/readyz").text.strip() == "ready"
        assert httpx.get(f"{url}/_slicecache/nope").status_code == 404
        assert httpx.post(f"{url}/_slicecache").status_code == 404
    assert not [e for e in origin.app.log_entries() if e["path"].startswith("/_slicecache")]


def test_request_id_is_echoed_and_forwarded(proxy: ProxyFactory) -> None:
    with proxy(enable_cache=False) as url:
        response = httpx.get(f"{url}/echo", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert dict(response.json()["headers"])["x-request-id"] == "abc-123"
