"""The origin's Content-Length is trusted: excess bytes never reach aiohttp's parser."""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import given
from hypothesis import strategies as st

from app.upstream.client import AiohttpTransport
from app.upstream.framing import _Framing

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
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # close-delimited
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    ):
        framing = _Framing(with_body=True)
        assert framing.admit(head + b"anything") == head + b"anything"
        assert framing.off and not framing.cut


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


def test_excess_that_comes_late_drops_the_idle_connection_at_once() -> None:
    """The excess arrives after the response was read and its connection went back to
    aiohttp's pool: the next request goes out on a new connection (helper-35: the idle
    connection, only marked, was reused once more)."""

    dropped: list[str] = []

    async def run() -> tuple[list[bytes], int]:
        connections: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(HEAD + b"0123456789")
                    await writer.drain()
                    await asyncio.sleep(0.05)  # the client is done with the response
                    writer.write(b"late")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = AiohttpTransport(pool_size=4, dropped=lambda kind, _: dropped.append(kind))
        bodies = []
        try:
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(2):
                    response = await client.get(f"http://127.0.0.1:{port}/")
                    bodies.append(response.content)
                    await asyncio.sleep(0.2)  # the late bytes arrive while it idles
                count = len(connections)
        finally:
            server.close()
        return bodies, count

    bodies, connections = asyncio.run(run())
    assert bodies == [b"0123456789", b"0123456789"]
    assert connections == 2, "the connection that got late excess was reused"
    assert dropped == ["origin_excess_bytes", "origin_excess_bytes"]
