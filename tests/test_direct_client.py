"""The slice engine's origin client (app/upstream/direct.py) against scripted origins on
loopback: framings, reuse, faults, timeouts and the pool's bounds, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.edge.interim import interim_sink
from app.upstream.direct import DirectBody, DirectTransport, SliceRouting
from cache.ratelimit import RateLimitedLog

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
PAYLOAD = bytes((i * 7 + 3) % 256 for i in range(300_000))
TIMEOUTS = {"connect": 2.0, "read": 2.0, "pool": 2.0}


class ScriptedOrigin:
    """Runs ``script`` for every request head read on any connection; counts connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                await self.script(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.close()


def _request(url: str, read: float = 2.0, pool: float = 2.0) -> httpx.Request:
    request = httpx.Request("GET", url + "/obj", headers={"range": "bytes=0-"})
    request.extensions["timeout"] = {**TIMEOUTS, "read": read, "pool": pool}
    return request


async def _read_all(response: httpx.Response, piece: int = 65536) -> bytes:
    body = bytearray()
    buffer = bytearray(piece)
    while True:
        count = await _body(response).read_into(memoryview(buffer))
        if not count:
            return bytes(body)
        body += buffer[:count]


def _body(response: httpx.Response) -> DirectBody:
    assert isinstance(response.stream, DirectBody)
    return response.stream


def _head(status: int, *fields: str) -> bytes:
    return (f"HTTP/1.1 {status} X\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n").encode()


def content_length(payload: bytes, extra: bytes = b"") -> Script:
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(206, f"Content-Length: {len(payload)}") + payload + extra)
        await writer.drain()

    return script


async def test_a_content_length_body_lands_in_the_callers_buffer_and_the_connection_is_reused() -> (
    None
):
    origin = ScriptedOrigin(content_length(PAYLOAD))
    transport = DirectTransport(pool_size=4)
    async with origin.running() as url:
        for _ in range(3):
            response = await transport.handle_async_request(_request(url))
            assert response.status_code == 206
            assert response.headers["content-length"] == str(len(PAYLOAD))
            assert await _read_all(response, piece=10_000) == PAYLOAD
            await response.aclose()
        await transport.aclose()
    assert origin.connections == 1, "a whole Content-Length body leaves a reusable connection"
    assert origin.requests[0].startswith(b"GET /obj HTTP/1.1\r\n")
    assert b"\r\nrange: bytes=0-\r\n" in origin.requests[0].lower()


async def test_bytes_after_the_announced_body_are_never_read_and_the_connection_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    origin = ScriptedOrigin(content_length(b"abcdef", extra=b"HTTP/1.1 200 OK\r\n\r\nnope"))
    warnings = RateLimitedLog(logging.getLogger("slicecache.test"), 60.0)
    counted: list[str] = []
    transport = DirectTransport(pool_size=4, warnings=warnings, count=counted.append)
    async with origin.running() as url:
        for _ in range(2):
            response = await transport.handle_async_request(_request(url))
            await asyncio.sleep(0.05)  # the excess has arrived
            assert await _read_all(response) == b"abcdef"
            await response.aclose()
        await transport.aclose()
    assert origin.connections == 2, "a connection with excess bytes was reused"
    # Said once per interval, counted every time.
    said = [r.getMessage() for r in caplog.records if r.name == "slicecache.test"]
    assert said == ["origin sent more than its answer; connection dropped"], said
    assert counted == ["origin_excess_bytes", "origin_excess_bytes"]


async def test_bytes_sent_on_an_idle_connection_drop_it_counted() -> None:
    async def late(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(206, "Content-Length: 3") + b"abc")
        await writer.drain()
        await asyncio.sleep(0.05)  # the client has put the connection back in its pool
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()

    origin = ScriptedOrigin(late)
    counted: list[str] = []
    transport = DirectTransport(pool_size=4, count=counted.append)
    async with origin.running() as url:
        response = await transport.handle_async_request(_request(url))
        assert await _read_all(response) == b"abc"
        await response.aclose()
        await asyncio.sleep(0.2)  # the unasked answer arrives while the connection idles
        response = await transport.handle_async_request(_request(url))
        assert await _read_all(response) == b"abc", "the unasked answer was read as this one"
        await response.aclose()
        await transport.aclose()
    assert counted == ["origin_excess_bytes"]
    assert origin.connections == 2, "the connection that got unasked bytes was reused"


async def test_a_body_cut_short_fails_and_its_connection_is_not_reused() -> None:
    async def short(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(206, "Content-Length: 100") + b"x" * 40)
        await writer.drain()
        writer.close()

    origin = ScriptedOrigin(short)
    transport = DirectTransport(pool_size=4)
    async with origin.running() as url:
        response = await transport.handle_async_request(_request(url))
        with pytest.raises(httpx.RemoteProtocolError, match="60 body bytes due"):
            await _read_all(response)
        await response.aclose()
        assert transport._open == 0
        await transport.aclose()


async def test_chunked_and_close_delimited_bodies_are_decoded() -> None:
    async def chunked(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, "Transfer-Encoding: chunked"))
        for start in range(0, len(PAYLOAD), 70_001):
            piece = PAYLOAD[start : start + 70_001]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def until_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200) + PAYLOAD)
        await writer.drain()
        writer.close()

    async def coded_until_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # RFC 9112 6.3: a coding but chunked last delimits by the connection's end.
        writer.write(_head(200, "Transfer-Encoding: x-unknown") + PAYLOAD)
        await writer.drain()
        writer.close()

    transport = DirectTransport(pool_size=4)
    scripts = ((chunked, True), (until_close, False), (coded_until_close, False))
    for script, reused in scripts:
        origin = ScriptedOrigin(script)
        async with origin.running() as url:
            for _ in range(2):
                response = await transport.handle_async_request(_request(url))
                assert b"".join([c async for c in response.aiter_raw()]) == PAYLOAD
                await response.aclose()
        # A chunked body is read to its end, but only Content-Length bodies are reused.
        assert origin.connections == 2 or reused
    await transport.aclose()


async def test_a_head_request_and_a_304_have_no_body() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(304, 'ETag: "v1"') + _head(200, "Content-Length: 5"))
        await writer.drain()

    origin = ScriptedOrigin(answer)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        response = await transport.handle_async_request(_request(url))
        assert response.status_code == 304
        assert await _read_all(response) == b""
        await response.aclose()
        await transport.aclose()


async def test_interim_answers_reach_the_sink_and_the_final_one_is_returned() -> None:
    async def early_hints(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(103, "Link: </style.css>; rel=preload"))
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(_head(206, "Content-Length: 3") + b"abc")
        await writer.drain()

    seen: list[tuple[int, list[tuple[bytes, bytes]]]] = []

    async def sink(status: int, fields: Sequence[tuple[bytes, bytes]]) -> None:
        seen.append((status, list(fields)))

    origin = ScriptedOrigin(early_hints)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        token = interim_sink.set(sink)
        try:
            response = await transport.handle_async_request(_request(url))
        finally:
            interim_sink.reset(token)
        assert response.status_code == 206
        assert await _read_all(response) == b"abc"
        await response.aclose()
        await transport.aclose()
    assert seen == [(103, [(b"Link", b"</style.css>; rel=preload")])]


async def test_a_pooled_connection_the_origin_closed_is_replaced_without_an_error() -> None:
    async def once(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(206, "Content-Length: 2") + b"ok")
        await writer.drain()
        writer.close()  # keep-alive promised (HTTP/1.1), then closed while idle

    origin = ScriptedOrigin(once)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        for _ in range(3):
            response = await transport.handle_async_request(_request(url))
            assert await _read_all(response) == b"ok"
            await response.aclose()
        await transport.aclose()
    assert origin.connections == 3


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            b"HTTP/1.1 206 X\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n",
            "control character|value char",
        ),
        (b"HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", "switched"),
        (b"HTTP/1.1 2x6 X\r\nContent-Length: 0\r\n\r\n", "bad origin response head"),
        (b"HTTP/1.1 206 X\r\nContent-Length: 1, 2\r\n\r\n", "bad origin response head"),
        (b"HTTP/1.1 206 X\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "too large"),
        (b"HTTP/1.1 103 Early Hints\r\n\r\n" * 17, "interim answers"),
        # Transfer-Encoding over all its lines: chunked alone or not at all (helper-35:
        # the second line was not read, the chunked framing reached the client as body).
        *(
            (_head(206, *codings) + b"3\r\nabc\r\n0\r\n\r\n", "chunked with another")
            for codings in (
                ("Transfer-Encoding: identity", "Transfer-Encoding: chunked"),
                ("Transfer-Encoding: chunked", "Transfer-Encoding: identity"),
                ("Transfer-Encoding: gzip, chunked",),
                ("Transfer-Encoding: chunked, chunked",),
                ("Transfer-Encoding: chunked ,",),  # llhttp: not chunked, read to the end
                ("Transfer-Encoding: chunked;x=1",),  # no parameters (helper-36)
                ("Transfer-Encoding: gzip, chunked;x=1",),
            )
        ),
    ],
)
async def test_a_malformed_answer_is_a_protocol_error_and_frees_its_connection(
    answer: bytes, error: str
) -> None:
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    origin = ScriptedOrigin(script)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        with pytest.raises(httpx.RemoteProtocolError, match=error):
            await transport.handle_async_request(_request(url))
        assert transport._open == 0
        await transport.aclose()


async def test_a_chunked_coding_is_read_whatever_its_spelling() -> None:
    async def chunked(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(206, "transfer-encoding:  Chunked ") + b"3\r\nabc\r\n0\r\n\r\n")
        await writer.drain()

    origin = ScriptedOrigin(chunked)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        response = await transport.handle_async_request(_request(url))
        assert await _read_all(response) == b"abc"
        await response.aclose()
        await transport.aclose()


async def test_interim_answers_share_the_final_heads_read_timeout() -> None:
    """Each 1xx within the read timeout, all of them not: the head times out (helper-35:
    every interim answer started the timeout anew, 17 of them held a connection 17
    times as long)."""

    async def hints(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _hint in range(8):
            writer.write(_head(103, "Link: </a.css>"))
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(_head(206, "Content-Length: 3") + b"abc")
        await writer.drain()

    origin = ScriptedOrigin(hints)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(_request(url, read=0.35, pool=1.0))
        assert transport._open == 0
        response = await transport.handle_async_request(_request(url, read=2.0))
        assert await _read_all(response) == b"abc", "a slower answer within the timeout"
        await response.aclose()
        await transport.aclose()


async def test_timeouts_and_refusals_are_httpx_errors_and_the_pool_is_bounded() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    origin = ScriptedOrigin(silent)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(_request(url, read=0.1, pool=0.1))
        assert transport._open == 0

    # The pool's one connection in use: the next request waits at most the pool timeout.
    origin = ScriptedOrigin(content_length(b"held"))
    async with origin.running() as url:
        held = await transport.handle_async_request(_request(url))
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(_request(url, read=1.0, pool=0.1))
        waiting = asyncio.ensure_future(transport.handle_async_request(_request(url)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert await _read_all(held) == b"held"
        await held.aclose()
        second = await waiting
        assert await _read_all(second) == b"held"
        await second.aclose()

    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(_request(f"http://127.0.0.1:{port}"))
    assert transport._open == 0  # the idle one to the other origin made room, then failed
    await transport.aclose()


async def _served_in_turn(
    transport: DirectTransport, url: str, name: str, order: list[str]
) -> None:
    response = await transport.handle_async_request(_request(url, pool=5.0))
    order.append(name)
    await _read_all(response)
    await response.aclose()


async def _waiters_queued(transport: DirectTransport, count: int) -> None:
    for _ in range(500):
        if len(transport._waiters) == count:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"never {count} requests waiting for the pool")


async def _queued_behind_one(
    transport: DirectTransport, url: str, names: str | list[str], order: list[str]
) -> tuple[httpx.Response, list[asyncio.Task[None]]]:
    """The pool's one connection held by a response (read, not yet closed), and a request
    per name queued for it in that order: closing the response frees the connection."""
    held = await transport.handle_async_request(_request(url))
    waiting = []
    for count, name in enumerate(names, 1):
        waiting.append(asyncio.create_task(_served_in_turn(transport, url, name, order)))
        await _waiters_queued(transport, count)
    await _read_all(held)
    return held, waiting


async def test_requests_waiting_for_a_full_pool_are_served_oldest_first() -> None:
    origin = ScriptedOrigin(content_length(b"x" * 1000))
    transport = DirectTransport(pool_size=1)
    order: list[str] = []
    async with origin.running() as url:
        held, tasks = await _queued_behind_one(transport, url, "abcde", order)
        await held.aclose()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert order == list("abcde")
        assert origin.connections == 1, "the one connection was handed on, not reopened"
        assert not transport._waiters
        await transport.aclose()


async def test_a_woken_waiter_that_leaves_passes_its_turn_on() -> None:
    """Cancelled after the freed connection woke it, before it ran: the next waiter gets
    the connection at once, not after its pool timeout."""
    origin = ScriptedOrigin(content_length(b"y"))
    transport = DirectTransport(pool_size=1)
    order: list[str] = []
    async with origin.running() as url:
        held, (first, second) = await _queued_behind_one(transport, url, ["first", "second"], order)
        await held.aclose()  # wakes "first" ...
        first.cancel()  # ... which leaves before it runs
        started = time.monotonic()
        await asyncio.wait_for(second, 4)
        assert time.monotonic() - started < 2.5, "the second waiter waited for its timeout"
        assert order == ["second"]
        assert first.cancelled()
        assert transport._open == 1 and not transport._waiters
        await transport.aclose()


async def test_a_newcomer_does_not_take_the_connection_freed_for_a_waiter() -> None:
    """The newcomer's first step runs after the release and before the woken waiter's:
    it queues behind that waiter instead of taking the idle connection (which sent the
    waiter back to wait, and at worst to its pool timeout while later requests got in)."""
    origin = ScriptedOrigin(content_length(b"w"))
    transport = DirectTransport(pool_size=1)
    order: list[str] = []
    async with origin.running() as url:
        held, (waiter,) = await _queued_behind_one(transport, url, ["waiter"], order)
        newcomer = asyncio.ensure_future(_served_in_turn(transport, url, "newcomer", order))
        await held.aclose()  # frees the connection after the newcomer was scheduled
        await asyncio.wait_for(asyncio.gather(waiter, newcomer), 4)
        assert order == ["waiter", "newcomer"]
        assert transport._woken == 0 and not transport._waiters
        await transport.aclose()


async def test_a_retry_after_a_dead_pooled_connection_keeps_its_turn() -> None:
    """The waiter woken for the one connection finds it dead (the origin closed it
    unanswered): its retry on a new connection goes before the requests queued after it,
    not behind them (helper-72)."""
    answered: dict[asyncio.StreamWriter, int] = {}

    async def one_per_connection(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answered.get(writer):
            writer.close()  # a second request on this connection: closed unanswered
            return
        answered[writer] = 1
        writer.write(_head(206, "Content-Length: 1") + b"r")
        await writer.drain()

    origin = ScriptedOrigin(one_per_connection)
    transport = DirectTransport(pool_size=1)
    order: list[str] = []
    async with origin.running() as url:
        held, (first, second) = await _queued_behind_one(transport, url, ["first", "second"], order)
        await held.aclose()  # "first" draws this connection, which the origin then drops
        await asyncio.wait_for(asyncio.gather(first, second), 4)
        assert order == ["first", "second"]
        assert origin.connections == 3
        assert transport._woken == 0 and not transport._waiters
        await transport.aclose()


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(["wait", "cancel", "timeout"]), st.integers(0, 3)),
        min_size=5,
        max_size=30,
    )
)
def test_the_pool_loses_no_slot_whoever_leaves_the_queue(
    plan: list[tuple[str, int]],
) -> None:
    """Requests over a pool of 2, some cancelled at random moments, some with a pool
    timeout too short to wait: every one that stays is served, and the pool ends with no
    waiter and no slot lost (a lost wake-up would leave the stayers to their timeout)."""

    async def run() -> None:
        origin = ScriptedOrigin(content_length(b"z" * 100))
        transport = DirectTransport(pool_size=2)
        async with origin.running() as url:
            tasks: list[tuple[str, asyncio.Task[None]]] = []
            for kind, delay in plan:
                pool = 0.001 if kind == "timeout" else 5.0

                async def one(pool: float = pool) -> None:
                    response = await transport.handle_async_request(_request(url, pool=pool))
                    await _read_all(response)
                    await response.aclose()

                task = asyncio.create_task(one())
                tasks.append((kind, task))
                for _ in range(delay):
                    await asyncio.sleep(0)
                if kind == "cancel":
                    task.cancel()
            for kind, task in tasks:
                if kind == "wait":
                    await asyncio.wait_for(task, 4)
                else:
                    with contextlib.suppress(asyncio.CancelledError, httpx.PoolTimeout):
                        await task
            assert not transport._waiters and transport._woken == 0
            assert 0 <= transport._open <= 2
            await transport.aclose()
            assert transport._open == 0

    asyncio.run(run())


async def test_an_idle_connection_is_closed_after_the_keepalive_time() -> None:
    origin = ScriptedOrigin(content_length(b"x"))
    transport = DirectTransport(pool_size=2, keepalive_seconds=0.05)
    async with origin.running() as url:
        response = await transport.handle_async_request(_request(url))
        await _read_all(response)
        await response.aclose()
        assert transport._open == 1
        for _ in range(100):
            if origin.closed_by_client:
                break
            await asyncio.sleep(0.01)
        assert origin.closed_by_client == 1
        assert transport._open == 0
        await transport.aclose()


async def test_routing_sends_only_marked_bodiless_requests_direct() -> None:
    seen: list[str] = []

    class Recorder(httpx.AsyncBaseTransport):
        def __init__(self, name: str) -> None:
            self.name = name

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(self.name)
            return httpx.Response(204)

    routing = SliceRouting(Recorder("direct"), Recorder("general"))  # type: ignore[arg-type]
    base = "http://127.0.0.1:9"
    marked = httpx.Request("GET", base + "/a", extensions={"slicecache.direct": True})
    await routing.handle_async_request(marked)
    await routing.handle_async_request(httpx.Request("GET", base + "/a"))
    with_body = httpx.Request("PUT", base + "/a", content=b"x")
    with_body.extensions["slicecache.direct"] = True
    await routing.handle_async_request(with_body)
    tls = httpx.Request("GET", "https://127.0.0.1:9/a", extensions={"slicecache.direct": True})
    await routing.handle_async_request(tls)
    assert seen == ["direct", "general", "general", "general"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=12),
    reads=st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=12),
    chunked=st.booleans(),
)
def test_any_split_of_an_answer_reads_back_the_same_body(
    cuts: list[int], reads: list[int], chunked: bool
) -> None:
    """However the origin's writes split the head and the body, and however large the
    caller's reads are, the body comes back byte for byte and nothing is left over."""
    payload = PAYLOAD[:20_000]
    if chunked:
        wire = _head(206, "Transfer-Encoding: chunked")
        for start in range(0, len(payload), 3001):
            piece = payload[start : start + 3001]
            wire += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        wire += b"0\r\n\r\n"
    else:
        wire = _head(206, f"Content-Length: {len(payload)}") + payload

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        position, index = 0, 0
        while position < len(wire):
            step = cuts[index % len(cuts)]
            writer.write(wire[position : position + step])
            await writer.drain()
            await asyncio.sleep(0)
            position += step
            index += 1

    async def run() -> None:
        origin = ScriptedOrigin(script)
        transport = DirectTransport(pool_size=1)
        async with origin.running() as url:
            for _ in range(2):
                response = await transport.handle_async_request(_request(url))
                body = bytearray()
                index = 0
                while True:
                    buffer = bytearray(reads[index % len(reads)])
                    index += 1
                    count = await _body(response).read_into(memoryview(buffer))
                    if not count:
                        break
                    body += buffer[:count]
                assert bytes(body) == payload
                await response.aclose()
            await transport.aclose()
        assert origin.connections == (2 if chunked else 1)

    asyncio.run(run())


def _chunked(
    payload: bytes, size: int = 1000, lie_at: int | None = None, fields: tuple[str, ...] = ()
) -> tuple[bytes, int]:
    """A 206 of ``payload`` chunked in ``size`` pieces; the chunk at ``lie_at`` claims 5
    bytes more than it has. Returns the wire bytes and where the size line after the lie
    ends (the head's end without a lie)."""
    wire = bytearray(_head(206, "Transfer-Encoding: chunked", *fields))
    after_lie = len(wire)
    for start in range(0, len(payload), size):
        piece = payload[start : start + size]
        claimed = len(piece) + (5 if start == lie_at else 0)
        wire += f"{claimed:x}\r\n".encode()
        if lie_at is not None and start == lie_at + size:
            after_lie = len(wire)
        wire += piece + b"\r\n"
    wire += b"0\r\n\r\n"
    return bytes(wire), after_lie


async def test_a_chunked_body_ends_with_its_message_not_with_what_follows_it() -> None:
    """A short chunked body and another response in the same write: the body is what
    its chunks said, nothing of the next response's (helper-33's finding 1)."""

    async def short_then_more(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        short = PAYLOAD[:900]
        writer.write(
            _head(206, "Transfer-Encoding: chunked")
            + f"{len(short):x}\r\n".encode()
            + short
            + b"\r\n0\r\n\r\n"
            + _head(200, "Content-Length: 100")
            + b"X" * 100
        )
        await writer.drain()

    origin = ScriptedOrigin(short_then_more)
    dropped: list[str] = []
    transport = DirectTransport(pool_size=1, count=dropped.append)
    async with origin.running() as url:
        response = await transport.handle_async_request(_request(url))
        assert await _read_all(response, piece=4096) == PAYLOAD[:900]
        await response.aclose()
        await transport.aclose()
    assert dropped == ["origin_excess_bytes"]  # counted, as after a Content-Length body


async def test_a_chunk_longer_than_its_bytes_is_never_handed_on() -> None:
    """A chunk size 5 bytes too large swallows the CRLF and size line after it; the parser
    sees it only at the next size line. Bytes are handed on only once the size line after
    their chunk parsed, so what came before the error is a true prefix (finding 2)."""
    wire, after_lie = _chunked(PAYLOAD[:20_000], lie_at=9000)

    async def lying(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(wire[:after_lie])
        await writer.drain()
        await asyncio.sleep(0.1)  # the reader takes what it can before the error shows
        writer.write(wire[after_lie:])
        await writer.drain()

    origin = ScriptedOrigin(lying)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        response = await transport.handle_async_request(_request(url))
        body = bytearray()
        buffer = bytearray(1500)
        with pytest.raises(httpx.RemoteProtocolError, match="bad chunked body"):
            while count := await _body(response).read_into(memoryview(buffer)):
                body += buffer[:count]
        assert bytes(body) == PAYLOAD[: len(body)], "bytes of a misframed chunk handed on"
        assert len(body) <= 9000
        await response.aclose()
        await transport.aclose()


async def test_trailer_fields_are_not_response_fields() -> None:
    async def with_trailer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            _head(206, "Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
        )
        await writer.drain()

    origin = ScriptedOrigin(with_trailer)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        response = await transport.handle_async_request(_request(url))
        assert await _read_all(response) == b"abc"
        assert "x-sum" not in response.headers
        await response.aclose()
        await transport.aclose()


SLICE = 65536
CHUNKED_FAULTS = ("short-then-more", "chunk-size-lie")  # on the first request (the probe)
RUN_FAULTS = ("cut-mid-run", "cut-then-whole")  # on the first request for several slices


class _FaultyOrigin(socketserver.ThreadingTCPServer):
    """Answers every Range of ``payload`` with a 206 over keep-alive connections (chunked
    for the chunked faults, else with a Content-Length), one answer broken as ``fault``
    says; ``ranges`` records what was asked."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, payload: bytes, fault: str) -> None:
        self.payload = payload
        self.fault = fault
        self.state = "armed"  # -> "cut" (a run was cut short) -> "done"
        self.ranges: list[tuple[int, int]] = []
        super().__init__(("127.0.0.1", 0), _FaultyHandler)


def _request_head(rfile: io.BufferedIOBase) -> bytes | None:
    """The next request head on a connection; None once the client closed it."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = rfile.readline()
        if not line:
            return None
        head += line
    return head


class _FaultyHandler(socketserver.StreamRequestHandler):
    server: _FaultyOrigin

    def handle(self) -> None:
        while True:
            head = _request_head(self.rfile)
            if head is None:
                return
            spec = re.search(rb"(?i)\r\nrange: bytes=(\d+)-(\d+)", head)
            if spec is None:  # passed through whole (once the Range was seen ignored)
                payload = self.server.payload
                self.wfile.write(_head(200, f"Content-Length: {len(payload)}") + payload)
                continue
            if not self._answer(int(spec[1]), int(spec[2])):
                return

    def _answer(self, first: int, last: int) -> bool:
        """Writes one answer; False when the connection is to be closed."""
        server, payload = self.server, self.server.payload
        last = min(last, len(payload) - 1)
        server.ranges.append((first, last))
        fields = (
            f"Content-Range: bytes {first}-{last}/{len(payload)}",
            'ETag: "v1"',
            "Cache-Control: public, max-age=600",
        )
        body = payload[first : last + 1]
        fault = server.fault
        if fault in CHUNKED_FAULTS:
            faulty = server.state == "armed"
            server.state = "done"
            if faulty and fault == "short-then-more":
                short = body[:-100]
                wire = _head(206, "Transfer-Encoding: chunked", *fields)
                wire += f"{len(short):x}\r\n".encode() + short + b"\r\n0\r\n\r\n"
                wire += _head(200, "Content-Length: 100") + b"X" * 100
                self.wfile.write(wire)
                return True
            lie_at = (len(body) // 2000) * 1000 if faulty else None
            wire, after_lie = _chunked(body, lie_at=lie_at, fields=fields)
            self.wfile.write(wire[:after_lie])
            self.wfile.flush()
            if faulty:
                time.sleep(0.2)  # the proxy reads what came before the lie shows
            self.wfile.write(wire[after_lie:])
            return True
        if server.state == "armed" and len(body) > SLICE:
            # The run's first slice and half the next, then the connection drops.
            server.state = "cut"
            self.wfile.write(_head(206, f"Content-Length: {len(body)}", *fields))
            self.wfile.write(body[: SLICE + SLICE // 2])
            return False
        if server.state == "cut" and fault == "cut-then-whole":
            # The retry is answered with the whole object, as if Range were ignored.
            server.state = "done"
            whole = (f"Content-Length: {len(payload)}", *fields[1:])
            self.wfile.write(_head(200, *whole) + payload)
            return True
        self.wfile.write(_head(206, f"Content-Length: {len(body)}", *fields) + body)
        return True


@pytest.mark.parametrize("fault", [*CHUNKED_FAULTS, *RUN_FAULTS])
def test_a_faulty_slice_answer_is_never_stored_or_served(
    proxy: Callable[..., contextlib.AbstractContextManager[str]], fault: str
) -> None:
    """End to end, helper-33's findings 1 and 2 (a chunked slice misframed) and
    helper-34's (a run of slices cut mid-way: the retry resumes at the slice it stopped
    in, read into it directly or copied from an answer that ignored the Range): the
    client and every later hit get the object's bytes."""
    payload = bytes((i * 31 + 7) % 251 for i in range(16 * SLICE))
    origin = _FaultyOrigin(payload, fault)
    thread = threading.Thread(target=origin.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{origin.server_address[1]}"
        with proxy(upstream_address=address, slice_size=SLICE) as url:
            for attempt in range(3):
                try:
                    got = httpx.get(f"{url}/obj.bin", timeout=30)
                except httpx.HTTPError:
                    assert attempt == 0, "only the first response may be cut off"
                    continue
                assert got.status_code == 200
                assert got.content == payload, f"attempt {attempt}: wrong bytes"
        if fault in RUN_FAULTS:
            assert origin.state != "armed", f"no run of several slices asked: {origin.ranges}"
            # The cut run asked again (other runs go on meanwhile): from where it stopped.
            cut = next(i for i, (a, b) in enumerate(origin.ranges) if b - a + 1 > SLICE)
            first, last = origin.ranges[cut]
            retry = next(a for a, b in origin.ranges[cut + 1 :] if b == last)
            assert retry == first + SLICE + SLICE // 2, origin.ranges
    finally:
        origin.shutdown()
        origin.server_close()


async def test_a_head_dripped_slower_than_the_read_timeout_in_all_times_out() -> None:
    """Each byte within the read timeout, the whole head not: the connection is let go
    (helper-33's finding 3: such an origin held the pool after its clients left)."""

    async def drip(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in _head(206, "Content-Length: 1", "X-Pad: " + "p" * 40):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    origin = ScriptedOrigin(drip)
    transport = DirectTransport(pool_size=1)
    async with origin.running() as url:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(_request(url, read=0.3, pool=1.0))
        assert transport._open == 0
        await transport.aclose()


class _ScriptedRangeOrigin(socketserver.ThreadingTCPServer):
    """Answers a GET's Range with a 206 and anything else with a 200, chunked; the
    Transfer-Encoding said on two lines (``identity``, then ``chunked``) while
    ``two_codings``; ``cache_control(first byte)`` says each answer's Cache-Control.
    ``ranges``: the first byte of each Range asked."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, payload: bytes, cache_control: Callable[[int], str]) -> None:
        self.payload = payload
        self.two_codings = False
        self.cache_control = cache_control
        self.ranges: list[int] = []
        super().__init__(("127.0.0.1", 0), _ScriptedRangeHandler)


class _ScriptedRangeHandler(socketserver.StreamRequestHandler):
    server: _ScriptedRangeOrigin

    def handle(self) -> None:
        while True:
            head = _request_head(self.rfile)
            if head is None:
                return
            length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
            self.rfile.read(int(length[1]) if length else 0)
            fields = ["Transfer-Encoding: chunked"]
            if self.server.two_codings:
                fields.insert(0, "Transfer-Encoding: identity")
            payload, first = self.server.payload, 0
            spec = re.search(rb"(?i)\r\nrange: bytes=(\d+)-(\d+)", head)
            if spec is None:
                body = payload
            else:
                first, last = int(spec[1]), min(int(spec[2]), len(payload) - 1)
                self.server.ranges.append(first)
                fields.append(f"Content-Range: bytes {first}-{last}/{len(payload)}")
                body = payload[first : last + 1]
            fields += ['ETag: "v1"', f"Cache-Control: {self.server.cache_control(first)}"]
            chunks = b"".join(
                f"{len(body[at : at + 5000]):x}\r\n".encode() + body[at : at + 5000] + b"\r\n"
                for at in range(0, len(body), 5000)
            )
            status = 206 if spec is not None else 200
            self.wfile.write(_head(status, *fields) + chunks + b"0\r\n\r\n")


@contextlib.contextmanager
def _scripted_range_origin(
    payload: bytes, cache_control: Callable[[int], str]
) -> Iterator[_ScriptedRangeOrigin]:
    origin = _ScriptedRangeOrigin(payload, cache_control)
    thread = threading.Thread(target=origin.serve_forever, daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        origin.shutdown()
        origin.server_close()


def test_a_transfer_encoding_on_two_lines_is_a_bad_gateway_and_never_stored(
    proxy: Callable[..., contextlib.AbstractContextManager[str]],
) -> None:
    """End to end, helper-35's finding 1: both origin clients refuse it (the slice client
    read only the first line and served and stored the chunk framing as the body)."""
    payload = bytes((i * 13 + 5) % 253 for i in range(4 * SLICE))
    with _scripted_range_origin(payload, lambda _: "public, max-age=600") as origin:
        origin.two_codings = True
        address = f"127.0.0.1:{origin.server_address[1]}"
        with proxy(upstream_address=address, slice_size=SLICE) as url:
            with httpx.Client(base_url=url, timeout=30) as client:
                assert client.get("/obj.bin").status_code == 502
                assert client.post("/form", content=b"x=1").status_code == 502
                origin.two_codings = False
                got = client.get("/obj.bin")
                assert (got.status_code, got.content) == (200, payload)
                posted = client.post("/form", content=b"x=1")
                assert (posted.status_code, posted.content) == (200, payload)


@pytest.mark.parametrize("refusal", ["no-store", "private"])
def test_a_later_slice_that_forbids_storing_is_served_not_stored(
    proxy: Callable[..., contextlib.AbstractContextManager[str]], refusal: str
) -> None:
    """The first slice's answer allows storing, the later ones' do not (helper-35's
    finding 6: only the first answer was obeyed): each slice obeys its own, as nginx's."""
    payload = bytes((i * 17 + 3) % 241 for i in range(4 * SLICE))
    with _scripted_range_origin(
        payload, lambda first: "public, max-age=600" if first == 0 else refusal
    ) as origin:
        address = f"127.0.0.1:{origin.server_address[1]}"
        with proxy(upstream_address=address, slice_size=SLICE) as url:
            with httpx.Client(base_url=url, timeout=30) as client:
                asked = []
                for _ in range(2):
                    origin.ranges.clear()
                    got = client.get("/obj.bin")
                    assert (got.status_code, got.content) == (200, payload)
                    asked.append(sorted(origin.ranges))
                metrics = client.get("/_slicecache/metrics").text
        # The first slice stored, the later ones (in runs of one or more) asked again.
        assert asked[0][0] == 0 and asked[1] and asked[1][0] == SLICE, asked
        assert 'slicecache_errors_total{kind="slice_store_forbidden"}' in metrics
