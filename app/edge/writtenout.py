"""Waiting until a response's bytes have left user space: the ``slicecache.written_out``
ASGI extension.

uvloop's transport (and asyncio's from Python 3.12) keeps a reference to a buffer it could
not write at once instead of copying it. A response writing an L2 slice straight from the
mapped device (a :class:`cache.protocol.SliceLease`) must therefore not release the lease
while the transport still holds part of the slice: the extent could be recycled and the
client sent another object's bytes. ``scope["extensions"][WRITTEN_OUT]["watch"]`` is a
:class:`WriteWatch`: ``buffered()`` says how many bytes written so far the transport still
holds (the rest is in the kernel's socket buffer, a copy), ``await wait()`` returns once it
holds none or the connection is gone, ``abort()`` drops the connection and what it holds,
``end_early()`` closes it after what was written, for a response the app cuts short on
purpose (uvicorn would otherwise log an error line for each one it sees left incomplete),
``lost()`` says whether the connection ended in an error, discarding what it held, and
``gone()`` whether the client left before the response was whole (uvicorn then drops every
``send`` without a word), and ``started()`` whether its head was sent.

How it waits without polling: the write-buffer limits are set to 0 for the wait, so the
transport pauses the protocol while anything is buffered and resumes it only once the
buffer is empty; uvicorn's flow control turns that into an event. The limits are put back
afterwards. If the wait is abandoned (the response task cancelled) while bytes are still
buffered, the connection is aborted: the response is cut short anyway, and nothing of a
lease about to be released may be written later.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any, Protocol

WRITTEN_OUT = "slicecache.written_out"


class WriteWatch(Protocol):
    def buffered(self) -> int: ...

    async def wait(self) -> None: ...

    def abort(self) -> None: ...

    def end_early(self) -> None: ...

    def lost(self) -> bool: ...

    def gone(self) -> bool: ...

    def refused(self) -> bool: ...

    def started(self) -> bool: ...


class WrittenOut:
    """The wait for one request on its connection (uvicorn's protocol: ``transport``,
    ``flow``; the request's own cycle: the protocol's ``cycle`` is the newest request's,
    a pipelined one's while this one still runs)."""

    __slots__ = ("_protocol", "_held")

    def __init__(self, protocol: Any, cycle: Any) -> None:
        # Both weakly: the watch lives in the cycle's scope, and the protocol holds the
        # cycle, so strong references back would make a reference cycle per request that
        # only a full collection frees. While the app runs, its task holds the cycle and
        # the cycle the protocol (uvicorn's ``on_response``).
        self._protocol = weakref.proxy(protocol)
        self._held = weakref.ref(cycle)

    def buffered(self) -> int:
        if self.gone():
            return 0  # the transport discarded what it held
        size: int = self._protocol.transport.get_write_buffer_size()
        return size

    def abort(self) -> None:
        self._protocol.transport.abort()

    def end_early(self) -> None:
        """The response is cut short on purpose, its cause already counted and logged (the
        access line's ``aborted``): the connection closes once what was written is out, so
        the client sees a truncated transfer, without uvicorn's "returned without completing
        response" error line. Called after the response's leases were released (their
        bytes are out, or the connection was aborted for them)."""
        cycle = self._held()
        if cycle is not None:
            cycle.disconnected = True  # uvicorn's mark for "nothing more to send here"
        self._protocol.transport.close()

    def lost(self) -> bool:
        """The connection ended in an error (reset, broken pipe): what the transport held
        then was discarded, not sent."""
        return bool(self._protocol.lost_in_error)

    def gone(self) -> bool:
        """The client left before the response was whole: uvicorn drops its sends."""
        cycle = self._held()
        return cycle is None or bool(cycle.disconnected)

    def refused(self) -> bool:
        """Right after a write: the transport holds nothing and is closing. Either a clean
        close that flushed it, or a write that failed at once (EPIPE: the client had reset)
        and was discarded; ``lost()`` tells them apart once ``connection_lost``, which
        that failure schedules, has run."""
        transport = self._protocol.transport
        return bool(transport.is_closing() and not transport.get_write_buffer_size())

    def started(self) -> bool:
        """The response's head was sent."""
        cycle = self._held()
        return cycle is not None and bool(cycle.response_started)

    async def wait(self) -> None:
        protocol = self._protocol
        transport: asyncio.WriteTransport = protocol.transport
        if transport.get_write_buffer_size() == 0 or self.gone():
            return
        low, high = transport.get_write_buffer_limits()
        try:
            transport.set_write_buffer_limits(high=0, low=0)
        except RuntimeError:  # closed under us: nothing more will be written
            return
        try:
            while transport.get_write_buffer_size() and not self.gone():
                await protocol.flow.drain()  # set on resume (buffer empty) or on loss
                if transport.get_write_buffer_size() and not self.gone():
                    await asyncio.sleep(0.001)  # paused state out of step: look again soon
        except BaseException:
            if transport.get_write_buffer_size() and not self.gone():
                transport.abort()
            raise
        finally:
            with contextlib.suppress(RuntimeError):
                if not transport.is_closing():
                    transport.set_write_buffer_limits(high=high, low=low)


def offer_written_out(protocol: Any, cycle: Any) -> None:
    """Offer the extension to the request of ``cycle`` on ``protocol``'s connection."""
    watch = WrittenOut(protocol, cycle)
    cycle.scope.setdefault("extensions", {})[WRITTEN_OUT] = {"watch": watch}
