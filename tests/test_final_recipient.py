"""Max-Forwards and the asterisk-form target: what the proxy answers itself (RFC 9110 7.6.2,
9.3.7, 9.3.8; RFC 9112 3.2.4), end to end against the demo origin, and the rule itself."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.edge.finalrecipient import MAX_FORWARDS_CAP, final_answer
from app.edge.h11server import H11EdgeProtocol
from tests.conftest import Origin, ProxyFactory


def _scope(
    method: str, headers: list[tuple[bytes, bytes]], raw_path: bytes = b"/x"
) -> dict[str, Any]:
    return {
        "method": method,
        "raw_path": raw_path,
        "path": raw_path.decode(),
        "query_string": b"",
        "headers": headers,
        "http_version": "1.1",
    }


def _raw(url: str, request: bytes) -> bytes:
    """One exchange on a fresh connection, read until the proxy closes it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@given(st.from_regex(r"\A[0-9]{1,40}\Z"), st.sampled_from(["OPTIONS", "TRACE"]))
def test_a_positive_max_forwards_is_decremented_and_capped(value: str, method: str) -> None:
    scope = _scope(method, [(b"host", b"a"), (b"max-forwards", value.encode())])
    answer = final_answer(scope)
    if int(value) == 0:
        assert answer is not None and answer.status == 200
        assert dict(scope["headers"])[b"max-forwards"] == value.encode()  # left as it was
    else:
        assert answer is None
        forwarded = int(dict(scope["headers"])[b"max-forwards"])
        assert forwarded == min(int(value) - 1, MAX_FORWARDS_CAP)


@given(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]), st.text(max_size=5))
def test_other_methods_ignore_max_forwards(method: str, value: str) -> None:
    headers = [(b"max-forwards", value.encode("utf-8"))]
    scope = _scope(method, list(headers))
    assert final_answer(scope) is None
    assert scope["headers"] == headers


def test_max_forwards_zero_is_answered_here_and_never_reaches_the_origin(
    proxy: ProxyFactory, origin: Origin
) -> None:
    with proxy() as url, httpx.Client(base_url=url) as client:
        options = client.options("/echo/mf", headers={"Max-Forwards": "0"})
        trace = client.request(
            "TRACE",
            "/echo/mf?x=1",
            headers={
                "Max-Forwards": "0",
                "X-Probe": "seen",
                "Cookie": "session=secret",
                "Authorization": "Bearer secret",
            },
        )
        after = client.get("/echo/mf")  # the same connection still serves
    assert options.status_code == 200
    assert options.headers["content-length"] == "0" and options.content == b""
    assert trace.status_code == 200
    assert trace.headers["content-type"] == "message/http"
    assert trace.content.startswith(b"TRACE /echo/mf?x=1 HTTP/1.1\r\n")
    assert b"x-probe: seen\r\n" in trace.content and trace.content.endswith(b"\r\n\r\n")
    assert b"secret" not in trace.content  # RFC 9110 9.3.8: sensitive fields left out
    assert after.status_code == 200
    assert [entry["method"] for entry in origin.requests_for("/echo/mf")] == ["GET"]


def test_a_positive_max_forwards_is_forwarded_one_less(proxy: ProxyFactory) -> None:
    with proxy() as url, httpx.Client(base_url=url) as client:
        sent = {
            value: client.options("/echo/mf", headers={"Max-Forwards": value}).json()
            for value in ("1", "007", "9" * 50)
        }
        get = client.get("/echo/mf", headers={"Max-Forwards": "0"}).json()
    seen = {value: dict((k.lower(), v) for k, v in body["headers"]) for value, body in sent.items()}
    assert seen["1"]["max-forwards"] == "0"
    assert seen["007"]["max-forwards"] == "6"
    assert seen["9" * 50]["max-forwards"] == str(MAX_FORWARDS_CAP)
    # Max-Forwards concerns OPTIONS and TRACE only: a GET is forwarded as it came.
    assert dict((k.lower(), v) for k, v in get["headers"])["max-forwards"] == "0"


def test_a_bad_max_forwards_is_a_400(proxy: ProxyFactory, origin: Origin) -> None:
    with proxy() as url, httpx.Client(base_url=url) as client:
        word = client.options("/echo/bad", headers={"Max-Forwards": "ten"})
        negative = client.request("TRACE", "/echo/bad", headers={"Max-Forwards": "-1"})
        two = client.options("/echo/bad", headers=[("Max-Forwards", "1"), ("Max-Forwards", "2")])
    for answer in (word, negative, two):
        assert answer.status_code == 400
        assert b"Max-Forwards" in answer.content
    assert origin.requests_for("/echo/bad") == []


@pytest.mark.parametrize("h11", [False, True], ids=["httptools", "h11"])
def test_asterisk_form_and_max_forwards_zero_on_both_protocols(
    proxy: ProxyFactory, h11: bool
) -> None:
    edge = {"http_protocol": H11EdgeProtocol} if h11 else {}
    with proxy(**edge) as url:
        options = _raw(url, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        get = _raw(url, b"GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        # Two on one connection: the first answer keeps it open for the second.
        trace = _raw(
            url,
            b"TRACE /t HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n"
            b"OPTIONS /t HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
        )
    assert options.startswith(b"HTTP/1.1 200 ") and b"content-length: 0\r\n" in options
    assert get.startswith(b"HTTP/1.1 400 ")
    assert trace.startswith(b"HTTP/1.1 200 ") and trace.count(b"HTTP/1.1 200 ") == 2
    assert b"content-type: message/http\r\n" in trace


def test_an_answer_here_to_a_request_with_a_body_closes_the_connection(
    proxy: ProxyFactory,
) -> None:
    # The body is never read: left on the connection, it would be taken for a request.
    with proxy() as url:
        out = _raw(
            url,
            b"OPTIONS /echo HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nContent-Length: 21\r\n\r\n"
            b"GET /smuggled HTTP/1.",
        )
    assert out.startswith(b"HTTP/1.1 200 ") and b"connection: close\r\n" in out
    assert out.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("method", ["OPTIONS", "GET", "DELETE"])
def test_the_asterisk_is_seen_under_a_root_path(method: str) -> None:
    """uvicorn prefixes the root path to raw_path: under ``--root-path /p`` the target
    ``*`` arrives as ``/p*`` and was forwarded (a GET of it even stored; helper-57)."""
    scope = _scope(method, [(b"host", b"o")], raw_path=b"/p*")
    scope["root_path"] = "/p"
    answer = final_answer(scope)
    assert answer is not None
    assert answer.status == (200 if method == "OPTIONS" else 400)
    # A path that merely starts like the root path is not the asterisk.
    other = _scope(method, [(b"host", b"o")], raw_path=b"/q*")
    other["root_path"] = "/p"
    assert final_answer(other) is None


def test_a_trace_answered_here_leaves_out_common_credential_fields() -> None:
    scope = _scope(
        "TRACE",
        [(b"max-forwards", b"0"), (b"x-api-key", b"k"), (b"x-auth-token", b"t"), (b"a", b"b")],
    )
    answer = final_answer(scope)
    assert answer is not None and answer.status == 200
    assert b"x-api-key" not in answer.body and b"x-auth-token" not in answer.body
    assert b"a: b" in answer.body
