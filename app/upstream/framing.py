"""Trust the origin's framing: bytes after the answer are dropped, and so is the
connection (what nginx and ATS do with "upstream sent more data than specified").

aiohttp's parser reads whatever follows a complete response as the start of the next
one: excess in the same packet failed the whole exchange (``BadStatusLine``), and a
response the origin wrote unasked on an idle connection waited in its queue as the
answer to the next request, another client's (helper-36: response smuggling).
:class:`LengthTrustingHandler` follows each answer's framing itself (its heads, 1xx
included, then a Content-Length or chunked body), cuts each read where the answer ends,
so the parser never sees the excess, and drops the connection. HTTP/1.1 without
pipelining (aiohttp sends one request at a time) means nothing legitimate can follow a
response before the next request. A head or chunk line two parsers may read differently
(bare LF or CR, folded lines, a 1xx with a body) is refused (a 502). Framings it does not
follow (read until close, 101, lines past its limits) are left to aiohttp, on a connection
that is not reused.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError

from app.upstream.wire import transfer_codings

HEAD_LIMIT = 64 * 1024  # beyond aiohttp's own header limits: leave it to aiohttp
HEX_DIGITS = b"0123456789abcdefABCDEF"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?")
# The 1xx answers llhttp reads without a body whatever their fields say (it gives the
# others the body their Content-Length or Transfer-Encoding announces).
BODILESS_INTERIM = frozenset({100, 102, 103})
LINE_LIMIT = 4096  # a chunk-size or trailer line longer than this: not followed
# The phases of a chunked body.
CHUNK_SIZE = b"size"
CHUNK_DATA = b"data"
CHUNK_DATA_END = b"data-end"
CHUNK_TRAILER = b"trailer"


class _Framing:
    """Where the current response ends, from its head (one per request)."""

    def __init__(self, with_body: bool) -> None:
        self.with_body = with_body
        self.head = bytearray()
        self.remaining: int | None = None  # body bytes still due; None: reading a head
        self.chunked: bytes | None = None  # chunked body: its phase (CHUNK_*), else None
        self.line = bytearray()  # a chunk-size or trailer line read so far
        self.off = False  # framing not followed: aiohttp decides, the connection is not reused
        self.done = False  # the final response is complete: anything more is excess
        self.cut = False  # excess was dropped
        self.refused: str | None = None  # the answer is not HTTP/1.1 we relay: why

    def admit(self, data: bytes) -> bytes:
        """The part of ``data`` that belongs to the response; the rest is dropped.

        Only head and chunk-line bytes are copied: a read that belongs to the response
        whole, however many heads and body bytes it holds, is passed on as received, and
        one with excess as one slice of it."""
        if self.off:
            return data
        if self.remaining is not None and self.chunked is None and 0 < len(data) <= self.remaining:
            # The body's middle or its last read, the hot path of a large download.
            self.remaining -= len(data)
            self.done = self.remaining == 0
            return data
        if self.done:
            self.cut = self.cut or bool(data)
            return b""
        kept = self._belonging(data)
        if kept == len(data) or self.off or self.refused:
            return data
        self.cut = True
        return data[:kept]

    def _belonging(self, data: bytes) -> int:
        """How many leading bytes of ``data`` belong to the response (state advanced)."""
        pos = 0
        while pos < len(data) and not self.done:
            if self.chunked is not None:
                pos = self._chunk_bytes(data, pos)
                if self.off or self.refused:
                    return len(data)
                continue
            if self.remaining is None:
                end = self._head_end(data, pos)
                if end < 0:
                    self.head += data[pos:]
                    self.refused = _head_refused(self.head)
                    self.off = len(self.head) > HEAD_LIMIT
                    return len(data)
                # The head without its blank line, which may have begun in earlier reads.
                head = (bytes(self.head) + data[pos:end])[:-4] if self.head else data[pos : end - 4]
                self.head = bytearray()
                pos = end
                self.refused = _head_refused(head + b"\r\n")
                if self.refused:
                    return len(data)
                if not self._start_body(head):
                    self.off = True
                    return len(data)
                continue  # an interim response's next head, a body, or done
            take = min(self.remaining, len(data) - pos)
            pos += take
            self.remaining -= take
            self.done = self.remaining == 0
        return pos

    def _chunk_bytes(self, data: bytes, pos: int) -> int:
        """Consume chunked-body bytes of ``data`` from ``pos`` (RFC 9112 7.1): size lines,
        chunk data and its CRLF, the trailer section; lines end at LF (a CR before it is
        stripped), as llhttp's lenient reading ends them. Returns the new position."""
        phase = self.chunked
        if phase == CHUNK_DATA:
            assert self.remaining is not None
            take = min(self.remaining, len(data) - pos)
            self.remaining -= take
            if self.remaining == 0:
                self.chunked = CHUNK_DATA_END
            return pos + take
        newline = data.find(b"\n", pos)
        if newline < 0:
            self.line += data[pos:]
            self.off = len(self.line) > LINE_LIMIT
            return len(data)
        line = bytes(self.line + data[pos:newline]) if self.line else data[pos:newline]
        self.line = bytearray()
        line = line.removesuffix(b"\r")
        pos = newline + 1
        if b"\r" in line or (phase == CHUNK_TRAILER and line[:1] in (b" ", b"\t")):
            # A bare CR, or a folded trailer line: parsers part ways on where it ends.
            self.refused = "origin sent a malformed chunked body"
            return pos
        if phase == CHUNK_DATA_END:
            if line:
                self.off = True  # chunk data longer than its size said: aiohttp fails it
            self.chunked = CHUNK_SIZE
        elif phase == CHUNK_SIZE:
            size = line.partition(b";")[0].strip()
            if not size or size.strip(HEX_DIGITS):  # int() would take 0x, _ and signs
                self.off = True
                return pos
            self.remaining = int(size, 16)
            self.chunked = CHUNK_DATA if self.remaining else CHUNK_TRAILER
        elif not line:  # the blank line ending the trailer section: the message's end
            self.chunked = None
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
        """Read a response head; False when its framing is not Content-Length or chunked
        (``refused`` set when it is not to be relayed at all)."""
        lines = head.split(b"\r\n")
        status_line = STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            self.refused = "origin sent a malformed status line"
            return False
        status = int(status_line[1])
        fields = [
            (name.strip(), value) for name, _, value in (x.partition(b":") for x in lines[1:])
        ]
        codings = transfer_codings(fields)
        lengths = {
            part.strip()
            for name, value in fields
            if name.lower() == b"content-length"
            for part in value.split(b",")
        }
        if 100 <= status < 200 and status != 101:
            if status not in BODILESS_INTERIM and (lengths or codings):
                # llhttp gives such an answer the body its fields announce, this framing
                # none (1xx have none): helper-38 smuggled a response in that body.
                self.refused = f"origin sent a {status} with a body"
                return False
            self.remaining = None
            return True
        if status == 101:
            return False
        if not self.with_body or status in (204, 304):
            self.remaining = 0
            self.done = True
            return True
        if codings:
            # Another coding than one chunked: refused by the client, or read until close.
            if codings != [b"chunked"]:
                return False
            self.chunked = CHUNK_SIZE
            return True
        if len(lengths) != 1:
            return False
        (length,) = lengths
        if not length.isdigit():
            return False
        self.remaining = int(length)
        self.done = self.remaining == 0
        return True


def _head_refused(head: bytes | bytearray) -> str | None:
    """Why a head (read so far) is refused, if it is: what parsers read in different ways
    is how responses get smuggled (helper-36, helper-37), so none of it is relayed (RFC
    9112 2.2 and 5.2 let a recipient reject each). A line ending in LF alone (llhttp in
    aiohttp accepts it, the slice client's does not); a CR not before LF; a line that
    begins with whitespace (a folded field, or a whitespace line after the status line,
    which llhttp reads as the end of the head)."""
    if head.count(b"\n") != head.count(b"\r\n"):
        return "origin sent a bare LF in a response head"
    if head.count(b"\r") - head.endswith(b"\r") != head.count(b"\r\n"):
        return "origin sent a bare CR in a response head"
    if b"\r\n " in head or b"\r\n\t" in head:
        return "origin sent a folded or blank-looking line in a response head"
    return None


class LengthTrustingHandler(ResponseHandler):
    """aiohttp's connection protocol, reading no further than the answer's end, refusing
    answers parsers may read differently, and reused only after an answer both ended.

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
        self.answered = False
        self._final = False

    def set_response_params(self, **kwargs: Any) -> None:
        # Called once per request, before its response is read.
        self._framing = _Framing(with_body=not kwargs.get("skip_payload", False))
        self.answered = False  # some of the answer came: a failure is not retried
        self._final = False  # aiohttp's parser has handed over this request's final answer
        super().set_response_params(**kwargs)

    def feed_data(self, data: Any, size: int = 0) -> None:
        """A parsed message on its way to the request: one after the final answer means
        aiohttp's parser ended that answer before this framing did. aiohttp may already
        have given the connection back to its pool (it does so as the body ends, in the
        middle of a read), so the message is dropped and the connection closed here, or
        the next request would read it as its answer (helper-38)."""
        if self._final:
            self._cut_excess()
            return
        code = data[0].code
        self._final = not (100 <= code < 200 and code != 101)
        super().feed_data(data, size)

    def data_received(self, data: bytes) -> None:
        framing = self._framing
        if framing is None or not data:
            # b"": aiohttp resuming its parser after a pause (base_protocol.resume_reading)
            # to parse what it held back; swallowed, a slow client's body stalled until
            # READ_TIMEOUT cut it short (helper-37).
            super().data_received(data)
            return
        self.answered = True
        kept = framing.admit(data)
        if framing.refused is not None:
            self._refuse(framing.refused)
            return
        if framing.off:
            self.force_close()  # not followed: it may not be read as the next answer
        if kept:
            super().data_received(kept)
        if framing.cut:
            self._cut_excess()

    def resume_reading(self, resume_parser: bool = True) -> None:
        """aiohttp re-arms its read timer on every resume, the last one included: read
        after the body's end (a client slower than the origin), it left the timer running
        on a connection back in the pool, which an idle longer than READ_TIMEOUT then
        failed, and the next request on it with it, at once (helper-73: a 504 in 0.65 ms).
        Nothing is awaited from the origin once the answer has ended."""
        super().resume_reading(resume_parser)
        payload = self._payload
        if self._final and (payload is None or payload.is_eof()):
            self._drop_timeout()

    def _cut_excess(self) -> None:
        """Bytes after the answer: never reuse this connection. Closed now, not only
        marked: excess that came late finds the connection idle in aiohttp's pool, which
        looks at the mark only when a request gives the connection back (helper-35: it was
        reused once more). The response, complete, reads on. Reported once."""
        if self._cut:
            return
        self._cut = True
        self.force_close()
        if self.transport is not None:
            self.transport.close()
        if self._dropped is not None:
            self._dropped("origin_excess_bytes", "origin sent more than its answer")

    @property
    def should_close(self) -> bool:
        """Reused only after an answer whose end this framing saw too: where it and
        aiohttp's parser disagree on the end, what one of them read as the next answer
        must not be handed to another request (helper-37: four such ways)."""
        framing = self._framing
        return bool(super().should_close) or (framing is not None and not framing.done)

    def _refuse(self, reason: str) -> None:
        """Fail the exchange (a 502 for the client) and drop the connection."""
        self._framing = None
        self.set_exception(HttpProcessingError(message=reason))
        if self.transport is not None:
            self.transport.close()
