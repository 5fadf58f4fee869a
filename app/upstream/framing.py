"""Trust the origin's Content-Length: bytes after the announced body are dropped, and so
is the connection (what nginx and ATS do with "upstream sent more data than specified").

aiohttp's parser reads whatever follows a complete response as the start of the next
one; when the excess arrives in the same packet it fails the whole exchange
(``BadStatusLine``), so a response with a correct status, headers and announced body
became a 502. :class:`LengthTrustingHandler` cuts each read at the end of the
Content-Length-delimited message it belongs to, so the parser never sees the excess, and
marks the connection not reusable. HTTP/1.1 without pipelining (aiohttp sends one
request at a time) means nothing legitimate can follow a response before the next
request. Framings it does not know (chunked, close-delimited, 101) are left to aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp.client_proto import ResponseHandler

HEAD_LIMIT = 64 * 1024  # beyond aiohttp's own header limits: leave it to aiohttp


class _Framing:
    """Where the current response ends, from its head (one per request)."""

    def __init__(self, with_body: bool) -> None:
        self.with_body = with_body
        self.head = bytearray()
        self.remaining: int | None = None  # body bytes still due; None: reading a head
        self.off = False  # unknown framing: aiohttp decides
        self.done = False  # the final response is complete: anything more is excess
        self.cut = False  # excess was dropped

    def admit(self, data: bytes) -> bytes:
        """The part of ``data`` that belongs to the response; the rest is dropped.

        Only head bytes are copied (to find where a head ends across reads): a read that
        belongs to the response whole, however many heads and body bytes it holds, is
        passed on as received, and one with excess as one slice of it."""
        if self.off:
            return data
        if self.remaining is not None and 0 < len(data) <= self.remaining:
            # The body's middle or its last read, the hot path of a large download.
            self.remaining -= len(data)
            self.done = self.remaining == 0
            return data
        if self.done:
            self.cut = self.cut or bool(data)
            return b""
        kept = self._belonging(data)
        if kept == len(data):
            return data
        self.cut = True
        return data[:kept]

    def _belonging(self, data: bytes) -> int:
        """How many leading bytes of ``data`` belong to the response (state advanced)."""
        pos = 0
        while pos < len(data):
            if self.remaining is None:
                end = self._head_end(data, pos)
                if end < 0:
                    self.head += data[pos:]
                    self.off = len(self.head) > HEAD_LIMIT
                    return len(data)
                # The head without its blank line, which may have begun in earlier reads.
                head = (bytes(self.head) + data[pos:end])[:-4] if self.head else data[pos : end - 4]
                self.head = bytearray()
                pos = end
                if not self._start_body(head):
                    self.off = True
                    return len(data)
                if self.remaining is None:
                    continue  # an interim response: the next head follows
            assert self.remaining is not None
            take = min(self.remaining, len(data) - pos)
            pos += take
            self.remaining -= take
            if self.remaining == 0:
                self.done = True
                return pos
        if self.remaining == 0:
            self.done = True
        return pos

    def _head_end(self, data: bytes, pos: int) -> int:
        """Where in ``data`` (from ``pos``) the head being read ends, just past its blank
        line; -1 if not in this read. The blank line may have begun in earlier reads."""
        if self.head:
            # At most three of its bytes are in the head read so far.
            tail = bytes(self.head[-3:])
            joined = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
            if joined >= 0:
                return pos + joined + 4 - len(tail)
        found = data.find(b"\r\n\r\n", pos)
        return found + 4 if found >= 0 else -1

    def _start_body(self, head: bytes) -> bool:
        """Read a response head; False when its framing is not a plain Content-Length."""
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            return False
        if 100 <= status < 200 and status != 101:
            self.remaining = None
            return True
        lengths: set[bytes] = set()
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                return False
            if name == b"content-length":
                lengths.update(part.strip() for part in value.split(b","))
        if status == 101 or len(lengths) != 1:
            return False
        (length,) = lengths
        if not length.isdigit():
            return False
        self.remaining = int(length) if self.with_body and status not in (204, 304) else 0
        return True


class LengthTrustingHandler(ResponseHandler):
    """aiohttp's connection protocol, reading no further than the announced body.

    ``dropped(kind, message)``: told once per connection whose excess was dropped (counted
    and logged as the direct client's, app/upstream/direct.py)."""

    _framing: _Framing | None = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        dropped: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(loop)
        self._dropped = dropped
        self._cut = False

    def set_response_params(self, **kwargs: Any) -> None:
        # Called once per request, before its response is read.
        self._framing = _Framing(with_body=not kwargs.get("skip_payload", False))
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        framing = self._framing
        if framing is None:
            super().data_received(data)
            return
        kept = framing.admit(data)
        if kept:
            super().data_received(kept)
        if framing.cut and not self._cut:
            self._cut = True
            # The excess may have been anything: never reuse this. Closed now, not only
            # marked: excess that came late finds the connection idle in aiohttp's pool,
            # which looks at the mark only when a request gives the connection back
            # (helper-35: it was reused once more). The response, complete, reads on.
            self.force_close()
            if self.transport is not None:
                self.transport.close()
            if self._dropped is not None:
                self._dropped("origin_excess_bytes", "origin sent more than its Content-Length")
