"""A download load client for timed windows: N keep-alive connections, bytes per connection.

curl processes are the bench's client elsewhere, but for "N clients for T seconds" they
measure themselves: under load, spawning 64 curls takes long enough that the last ones
start after the window has begun (or ended), and the fairness figure (bytes of the slowest
connection / the fastest) then says more about fork() than about the proxy. Here all
connections are opened first, the requests go out together, and each connection reads
into one preallocated buffer (``asyncio.BufferedProtocol``: no copy, no allocation per
read), re-requesting the URL whenever a response completes, until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

# libuv reads a ready socket up to 32 times per loop iteration: with 64 busy connections a
# 256 KiB buffer made one iteration ~0.5 GB, so the window's end was seen late.
_BUFFER = 64 * 1024


class _Conn(asyncio.BufferedProtocol):
    def __init__(self, request: bytes, deadline: list[float]) -> None:
        self.request = request
        self.deadline = deadline  # shared, set when the requests go out
        self.view = memoryview(bytearray(_BUFFER))
        self.transport: asyncio.WriteTransport | None = None
        self.body_bytes = 0
        self.completed = 0
        self.error = ""
        self._head = b""
        self._remaining: int | None = None  # body bytes left; None while reading a head
        self.closed = asyncio.Event()
        self.stopping = False  # set when the window ends and the client closes it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport subclasses none of asyncio's transport classes.
        self.transport = cast(asyncio.WriteTransport, transport)

    def send(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.stopping:
            return
        if time.monotonic() >= self.deadline[0]:
            # The window is over: bytes after the deadline do not count, whenever the
            # loop gets to them (a busy loop sees its timers late, reads are exact).
            self.stopping = True
            if self.transport is not None:
                self.transport.close()
            return
        if self._remaining is not None:
            self.body_bytes += nbytes
            self._remaining -= nbytes
        else:
            self._head += bytes(self.view[:nbytes])
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    self._fail("response head too long")
                return
            head, body = self._head[:end], len(self._head) - end - 4
            self._head = b""
            lines = head.split(b"\r\n")
            status = lines[0].split(b" ", 2)
            if len(status) < 2 or status[1] not in (b"200", b"206"):
                self._fail(f"status {lines[0][:40]!r}")
                return
            length = next(
                (
                    int(v)
                    for k, _, v in (ln.partition(b":") for ln in lines[1:])
                    if k.strip().lower() == b"content-length"
                ),
                None,
            )
            if length is None:
                self._fail("no Content-Length")
                return
            self.body_bytes += body
            self._remaining = length - body
        if self._remaining is not None and self._remaining <= 0:
            self._remaining = None
            self.completed += 1
            self.send()  # no pipelining, so nothing of the next response is here yet

    def _fail(self, why: str) -> None:
        self.error = why
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stopping and not self.error:
            self.error = f"closed by the server ({exc or 'EOF'})"
        self.closed.set()


@dataclass
class StreamResult:
    per_connection: list[int]  # body bytes each connection received in the window
    seconds: float
    completed: int
    errors: list[str]


async def stream_window(url: str, clients: int, seconds: float) -> StreamResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: slicecache-bench\r\n\r\n"
    ).encode("latin-1")
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    deadline = [float("inf")]
    for _ in range(clients):
        _, proto = await loop.create_connection(lambda: _Conn(request, deadline), host, port)
        conns.append(proto)
    t0 = time.monotonic()
    deadline[0] = t0 + seconds
    for c in conns:
        c.send()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed.wait() for c in conns)), timeout=seconds)
    elapsed = min(time.monotonic(), deadline[0]) - t0  # earlier only if every connection failed
    result = StreamResult(
        [c.body_bytes for c in conns],
        elapsed,
        sum(c.completed for c in conns),
        [c.error for c in conns if c.error],
    )
    for c in conns:
        c.stopping = True
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0)  # let the transports close before the loop goes away
    return result


def run(url: str, clients: int, seconds: float) -> StreamResult:
    try:
        import uvloop

        return uvloop.run(stream_window(url, clients, seconds))
    except ImportError:
        return asyncio.run(stream_window(url, clients, seconds))
