"""Writing a response's slices with L2 leases released as soon as their bytes are out.

An L2 slice comes as a view into the mapped device under a lease
(:class:`cache.protocol.SliceLease`). uvloop's transport keeps a reference to what it could
not write at once instead of a copy, so a lease must outlive the bytes the transport still
holds of it, and not much longer (it pins an extent). The response's :class:`LeaseWriter`
takes over the lease when the engine is done with a slice (``SliceClaim.release`` hands it
over through :data:`LEASE_HANDOVER`, set for the writing task only) and releases it once
the transport's buffer no longer holds any of it: bytes written so far minus bytes still
buffered (``WriteWatch.buffered``) is how far the stream is out. So the stream never waits
for its socket to drain between slices; it waits only when more than
:data:`MAX_PENDING_LEASES` slices are still (partly) buffered, and once before the response
ends. If the response ends abnormally with leased bytes still buffered, the connection is
aborted: the response is cut short anyway, and nothing may be written from a released
extent later. Without the server's watch (another server than app.edge's), each borrowed
piece is sent as a copy and leases are released at once, as before.
"""

from __future__ import annotations

from collections import deque
from contextvars import ContextVar

from starlette.types import Send

from app.edge.asgi_io import send_body
from app.edge.writtenout import WriteWatch
from cache.protocol import SliceData, SliceLease, borrowed

# The writer of the response the current task is producing (None: release at once).
LEASE_HANDOVER: ContextVar[LeaseWriter | None] = ContextVar("lease_handover", default=None)

# The largest piece of a borrowed slice handed to the transport at once (a slice is 1 MiB by
# default: one send per slice); bounds what the transport buffers of one slice.
WRITE_PIECE = 1 << 20
# Leases a response may hold for bytes its transport still buffers before it waits for the
# socket: a slow client pins at most this many extents (plus the slice being sent).
MAX_PENDING_LEASES = 2


class LeaseWriter:
    def __init__(self, send: Send, watch: WriteWatch | None) -> None:
        self._send = send
        self._watch = watch
        self._written = 0  # body bytes handed to the transport
        self._pending: deque[tuple[int, SliceLease]] = deque()  # (bytes written by then, lease)

    def take(self, lease: SliceLease) -> None:
        """A released claim's lease: every byte of it was written (or never will be)."""
        if self._watch is None:
            lease.release()
        else:
            self._pending.append((self._written, lease))
            self._release_flushed()

    async def write(self, piece: SliceData) -> None:
        if not borrowed(piece):
            await send_body(self._send, piece)
            self._written += len(piece)
            return
        for pos in range(0, len(piece), WRITE_PIECE):
            part = piece[pos : pos + WRITE_PIECE]
            # Without the watch nobody can tell when the transport is done with a view.
            await send_body(self._send, part if self._watch is not None else bytes(part))
            self._written += len(part)
        if self._pending:
            self._release_flushed()
            if len(self._pending) > MAX_PENDING_LEASES and self._watch is not None:
                await self._watch.wait()
                self._release_flushed()

    async def finish(self) -> None:
        """Before the response's last message: wait until no leased byte is buffered."""
        if self._pending and self._watch is not None:
            await self._watch.wait()
        self._release_flushed()

    def close(self) -> None:
        """The response is over, however it ended: release every lease still held."""
        if self._pending and self._watch is not None and self._watch.buffered():
            self._watch.abort()  # leased bytes still buffered: never written after release
        while self._pending:
            self._pending.popleft()[1].release()

    def _release_flushed(self) -> None:
        watch = self._watch
        out = self._written - (watch.buffered() if watch is not None else 0)
        pending = self._pending
        while pending and pending[0][0] <= out:
            pending.popleft()[1].release()
