"""The origin's framing is trusted: excess bytes never reach aiohttp's parser."""

from __future__ import annotations

import asyncio
import types

import httpx
import pytest
from aiohttp.client_proto import ResponseHandler
from hypothesis import given
from hypothesis import strategies as st

from app.upstream.client import AiohttpTransport, UpstreamClient, UpstreamTimeouts
from app.upstream.direct import MAX_INTERIM
from app.upstream.framing import LengthTrustingHandler, _Framing
from tests.test_direct_client import Script, ScriptedOrigin

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
EARLY = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"


def feed(framing: _Framing, pieces: list[bytes]) -> bytes:
    return b"".join(framing.admit(piece) for piece in pieces)


@given(st.lists(st.integers(1, 80), max_size=6), st.binary(max_size=40), st.booleans())
def test_any_split_keeps_exactly_the_announced_message(
    cuts: list[int], junk: bytes, interim: bool
) -> None:
    message = (EARLY if interim else b"") + HEAD + b"0123456789"
    stream = message + junk
    points = sorted({min(c * 3, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    framing = _Framing(with_body=True)
    assert feed(framing, pieces) == message
    assert framing.done
    assert framing.cut == bool(junk)


def test_head_and_bodiless_statuses_end_at_the_head() -> None:
    head_response = _Framing(with_body=False)
    assert head_response.admit(HEAD + b"junk") == HEAD and head_response.cut
    not_modified = _Framing(with_body=True)
    data = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
    assert not_modified.admit(data + b"x") == data and not_modified.cut


def test_other_framings_are_left_to_aiohttp() -> None:
    for head in (
        b"HTTP/1.1 200 OK\r\n\r\n",  # close-delimited
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",  # close-delimited too
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    ):
        framing = _Framing(with_body=True)
        assert framing.admit(head + b"anything") == head + b"anything"
        assert framing.off and not framing.cut


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=4),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(1, 80), max_size=8),
    st.binary(max_size=40),
)
def test_any_split_of_a_chunked_answer_keeps_exactly_the_message(
    chunks: list[bytes], extensions: bool, trailer: bool, cuts: list[int], junk: bytes
) -> None:
    """helper-36: the end of a chunked answer was not followed, so a response the origin
    wrote after it was read by aiohttp as the answer to the next request."""
    ext = b";name=value" if extensions else b""
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk) for chunk in chunks)
    message = EARLY + CHUNKED + body + b"0\r\n" + (b"X-Sum: 1\r\n" if trailer else b"") + b"\r\n"
    stream = message + junk
    points = sorted({min(c * 3, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    framing = _Framing(with_body=True)
    assert feed(framing, pieces) == message
    assert framing.done and not framing.off
    assert framing.cut == bool(junk)


# Heads two parsers read differently (helper-36, helper-37): each was a way to smuggle
# a response to the next request on the connection.
AMBIGUOUS_HEADS = [
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",  # LF alone
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n \r\nX: 1\r\n\r\n",  # whitespace line after the status
    b"HTTP/1.1 103 Early Hints\r\n\t\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: \r\r\nContent-Length: 0\r\n\r\n",  # CR before CRLF
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",  # a bare CR
    # A 1xx with a body: llhttp gives it one (but to 100, 102, 103), the framing none, so
    # a response hidden in that body reached the next request (helper-38).
    b"HTTP/1.1 199 X\r\nContent-Length: 5\r\n\r\nHTTP/",
    b"HTTP/1.1 104 X\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"abcdeHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",  # not a status line
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
]


def test_interim_answers_without_framing_fields_are_followed() -> None:
    answer = b"HTTP/1.1 104 X\r\nX: 1\r\n\r\nHTTP/1.0 200\r\nContent-Length: 2\r\n\r\nok"
    framing = _Framing(with_body=True)
    assert framing.admit(answer + b"junk") == answer
    assert framing.done and framing.cut and not framing.refused


def test_a_message_aiohttp_parses_after_the_final_answer_is_dropped_with_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wherever aiohttp's parser ends an answer before the framing does, what it parses
    next never reaches a request: aiohttp may have pooled the connection already, as the
    body ended in the middle of a read (helper-38)."""
    passed: list[int] = []
    monkeypatch.setattr(
        ResponseHandler, "feed_data", lambda self, data, size=0: passed.append(data[0].code)
    )
    dropped: list[str] = []
    handler = LengthTrustingHandler(asyncio.new_event_loop(), lambda kind, _: dropped.append(kind))
    try:
        handler.set_response_params(read_until_eof=False)
        for code in (103, 200, 302):
            handler.feed_data((types.SimpleNamespace(code=code), None))
        assert passed == [103, 200]
        assert handler.should_close and dropped == ["origin_excess_bytes"]
        handler.set_response_params(read_until_eof=False)  # a request on it would start over
        handler.feed_data((types.SimpleNamespace(code=200), None))
        assert passed == [103, 200, 200]
    finally:
        handler._loop.close()


@pytest.mark.parametrize("answer", AMBIGUOUS_HEADS)
def test_a_head_parsers_may_read_differently_is_refused(answer: bytes) -> None:
    framing = _Framing(with_body=True)
    framing.admit(answer)
    assert framing.refused


@pytest.mark.parametrize(
    "end", [b"0\r\nX: \r\r\n\r\n", b"0\r\nX: 1\r\n folded\r\n\r\n", b"5\r\r\nhello\r\n0\r\n\r\n"]
)
def test_a_chunked_body_parsers_may_end_differently_is_refused(end: bytes) -> None:
    framing = _Framing(with_body=True)
    framing.admit(CHUNKED + end)
    assert framing.refused


def test_a_connection_is_reused_only_after_an_answer_whose_end_the_framing_saw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the framing and aiohttp's parser part ways, the connection goes, whatever
    aiohttp thinks of the answer (helper-37)."""
    monkeypatch.setattr(ResponseHandler, "should_close", property(lambda self: False))
    monkeypatch.setattr(ResponseHandler, "data_received", lambda self, data: None)
    handler = LengthTrustingHandler(asyncio.new_event_loop())
    try:
        handler.set_response_params(read_until_eof=False)
        handler.data_received(CHUNKED + b"5\r\nhello\r\n")
        assert handler.should_close  # mid-body by the framing: aiohttp's word is not enough
        handler.data_received(b"0\r\n\r\n")
        assert not handler.should_close  # whole: reusable
    finally:
        handler._loop.close()


def test_aiohttp_resuming_its_parser_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp resumes a parser it paused for a slow reader with ``data_received(b"")``;
    swallowed, the bytes it held back were never parsed: a slow client's chunked body
    stalled until READ_TIMEOUT cut it short (helper-37)."""
    seen: list[bytes] = []
    monkeypatch.setattr(ResponseHandler, "data_received", lambda self, data: seen.append(data))
    handler = LengthTrustingHandler(asyncio.new_event_loop())
    try:
        handler.set_response_params(read_until_eof=False)
        handler.data_received(HEAD + b"01234")
        handler.data_received(b"")
        assert seen == [HEAD + b"01234", b""]
    finally:
        handler._loop.close()


def test_a_chunk_size_line_python_would_read_but_http_does_not_is_not_followed() -> None:
    for size in (b"0x5", b"+5", b"5_0", b""):
        framing = _Framing(with_body=True)
        framing.admit(CHUNKED + size + b"\r\nhello\r\n0\r\n\r\n")
        assert framing.off  # the connection is not reused; aiohttp fails the answer


async def _serve_once(answer: bytes) -> tuple[asyncio.Server, int, list[int]]:
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


def test_a_body_longer_than_announced_is_cut_and_the_connection_dropped() -> None:
    """Real sockets, the project's transport: the announced 10 bytes, twice, on two
    connections (the first one was not reused after its excess)."""

    dropped: list[str] = []

    async def run() -> tuple[list[bytes], int]:
        server, port, connections = await _serve_once(HEAD + b"0123456789" + b"x" * 26)
        transport = AiohttpTransport(pool_size=4, dropped=lambda kind, _: dropped.append(kind))
        bodies = []
        try:
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(2):
                    response = await client.get(f"http://127.0.0.1:{port}/")
                    assert response.status_code == 200
                    bodies.append(response.content)
        finally:
            server.close()
        return bodies, len(connections)

    bodies, connections = asyncio.run(run())
    assert bodies == [b"0123456789", b"0123456789"]
    assert connections == 2
    assert dropped == ["origin_excess_bytes", "origin_excess_bytes"]  # one per connection


def test_body_reads_are_handed_on_without_a_copy_up_to_the_last_byte() -> None:
    # The middle of a body and its last read (which ends exactly at the announced length,
    # the usual case for a slice's Range) are passed on as received: copying the last read
    # cost a copy of 1/16 of every byte of a miss (one 256 KiB read per 4 MiB request).
    framing = _Framing(with_body=True)
    framing.admit(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\r\n")
    middle, last = b"0123", b"456789"
    assert framing.admit(middle) is middle
    assert framing.admit(last) is last
    assert framing.done and not framing.cut
    assert framing.admit(b"x") == b"" and framing.cut


@given(st.integers(1, 200), st.integers(0, 3000), st.booleans())
def test_a_read_holding_head_and_body_is_passed_on_as_received(
    split: int, extra_body: int, excess: bool
) -> None:
    """The first read of a slice's answer holds its head and the start of its body: it is
    handed on as the very object received (no copy) unless it holds excess, which is cut
    off as one slice."""
    body = bytes(range(256)) * 20
    head = f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    first = head + body[: min(extra_body, len(body))]
    framing = _Framing(with_body=True)
    assert framing.admit(first) is first
    rest = body[len(first) - len(head) :] + (b"junk" if excess else b"")
    got = b"".join(framing.admit(rest[i : i + split]) for i in range(0, len(rest), split))
    assert first[len(head) :] + got == body
    assert framing.done and framing.cut == excess


async def test_excess_that_comes_late_drops_the_idle_connection_at_once() -> None:
    """The excess arrives after the response was read and its connection went back to
    aiohttp's pool: the next request goes out on a new connection (helper-35: the idle
    connection, only marked, was reused once more)."""

    async def late(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"0123456789")
        await writer.drain()
        await asyncio.sleep(0.05)  # the client is done with the response
        writer.write(b"late")
        await writer.drain()

    origin = ScriptedOrigin(late)
    dropped: list[str] = []
    transport = AiohttpTransport(pool_size=4, dropped=lambda kind, _: dropped.append(kind))
    bodies = []
    async with origin.running() as url, httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            bodies.append((await client.get(url + "/")).content)
            await asyncio.sleep(0.2)  # the late bytes arrive while it idles
        connections = origin.connections
    assert bodies == [b"0123456789", b"0123456789"]
    assert connections == 2, "the connection that got late excess was reused"
    assert dropped == ["origin_excess_bytes", "origin_excess_bytes"]


# --- the pass-through client against scripted origins (helper-36) --------------------------


def _chunked_then_late(late: bytes) -> Script:
    """A whole chunked answer; a moment later, unasked, ``late`` on the idle connection."""
    answers = iter([b"first", b"second"])

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = next(answers)
        writer.write(CHUNKED + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(late)
        await writer.drain()

    return script


async def test_a_response_written_unasked_after_a_chunked_answer_is_never_an_answer() -> None:
    """The origin writes a whole response on the idle connection after a chunked answer:
    the next request, another client's, got it as its answer (response smuggling)."""
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
    origin = ScriptedOrigin(_chunked_then_late(smuggled))
    dropped: list[str] = []
    transport = AiohttpTransport(pool_size=1, dropped=lambda kind, _: dropped.append(kind))
    async with origin.running() as url, httpx.AsyncClient(transport=transport) as client:
        first = await client.get(url + "/a")
        await asyncio.sleep(0.5)  # the unasked response has come
        second = await client.get(url + "/b")
    assert (first.content, second.content) == (b"first", b"second")
    assert origin.connections == 2  # the connection it came on was dropped
    assert dropped == ["origin_excess_bytes"]


@pytest.mark.parametrize("answer", AMBIGUOUS_HEADS)
async def test_a_head_parsers_may_read_differently_is_a_protocol_error(answer: bytes) -> None:
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    transport = AiohttpTransport(pool_size=1)
    async with ScriptedOrigin(script).running() as url:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(url + "/a")


def _interim(count: int, pause: float, final: bytes = b"") -> Script:
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _hint in range(count):
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(pause)
        writer.write(final)
        await writer.drain()

    return script


async def test_interim_answers_share_one_read_timeout_on_the_pass_through_client() -> None:
    """A 103 every 0.2 s for 6 s, the read timeout 1 s: a read timeout, not a wait for
    as long as the origin likes (aiohttp's timer restarted with each one)."""
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    transport = AiohttpTransport(pool_size=1)
    async with ScriptedOrigin(_interim(30, 0.2, final)).running() as url:
        async with httpx.AsyncClient(transport=transport, timeout=1.0) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(url + "/a")


async def test_more_interim_answers_than_the_slice_client_takes_are_a_protocol_error() -> None:
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with ScriptedOrigin(_interim(MAX_INTERIM, 0, final)).running() as url:
        async with httpx.AsyncClient(transport=AiohttpTransport(pool_size=1)) as client:
            assert (await client.get(url + "/a")).content == b"ok"  # as many: fine
    async with ScriptedOrigin(_interim(MAX_INTERIM + 1, 0, final)).running() as url:
        async with httpx.AsyncClient(transport=AiohttpTransport(pool_size=1)) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(url + "/a")


async def test_an_origin_that_closes_in_its_answer_is_asked_once() -> None:
    """A 103, then the connection closes: a failed answer, not a connection failure to
    retry; aiohttp's own retry and UpstreamClient's made four attempts."""

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        await writer.drain()
        writer.close()

    origin = ScriptedOrigin(script)
    async with origin.running() as url:
        upstream = UpstreamClient(
            url, UpstreamTimeouts(connect=2, read=2, total=None), AiohttpTransport(pool_size=1)
        )
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                await upstream.send("GET", "/a", [("host", "o")])
        finally:
            await upstream.aclose()
    assert len(origin.requests) == 1


@pytest.mark.parametrize("direct", [True, False], ids=["slice", "pass-through"])
async def test_the_general_client_sends_the_target_as_sent_with_any_header_bytes(
    direct: bool,
) -> None:
    """Slice requests go to the general client when the origin is not plain HTTP, and
    their URL names only the origin (the target travels beside it). Header values that
    aiohttp cannot send unchanged switch to httpx's transport: it too must send the
    client's target byte for byte, dot segments and all, not the URL's path."""
    from bench.origin import create_origin_app
    from tests.servers import run_asgi_in_thread

    target = "/echo/a/../b/%2e%2e/c?x=1&y=/../z"
    with run_asgi_in_thread(create_origin_app()) as url:
        upstream = UpstreamClient(
            url, UpstreamTimeouts(connect=2, read=2, total=None), AiohttpTransport(pool_size=2)
        )
        try:
            for value in ["plain", "caf\xe9\xff"]:  # UTF-8-decodable, then not
                response = await upstream.send(
                    "GET", target, [("host", "o"), ("x-name", value)], direct=direct
                )
                await response.aread()
                sent = response.json()
                assert sent["raw_path"] + "?" + sent["query"] == target, (value, sent)
                assert ["x-name", value] in sent["headers"], sent
        finally:
            await upstream.aclose()
