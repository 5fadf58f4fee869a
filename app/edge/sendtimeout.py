"""nginx's send_timeout for both edge protocols: a client that takes none of its response
for SEND_TIMEOUT seconds while the proxy waits to write more is reset, counted and logged.

A mixin of :class:`app.edge.httpserver.EdgeGuard` (so of the httptools and the h11
protocol): it needs the protocol's ``loop``, ``transport``, ``limits`` (``send_timeout``),
``refusals``, ``client``, ``cycle`` and the guard's one connection timer (``_wake_at``),
whose ``_deadlines_passed`` calls :meth:`SendTimeout._send_deadline_passed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import sys
import termios
from typing import Any

from app.context import SCOPE_KEY
from app.ops.accesslog import SEND_TIMEOUT_CUT


class SendTimeout:
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    limits: Any
    refusals: Any
    client: tuple[str, int] | None
    # While writing is paused: by when the client must have taken some of what is held
    # for it, and how much was held (transport and kernel) when that deadline was set.
    _send_deadline: float | None = None
    _send_held = 0
    _send_progress = False  # the transport resumed writing since the deadline was set
    send_expired = False  # closed by the send timeout

    def _wake_at(self, when: float) -> None:
        raise NotImplementedError

    # nginx's send_timeout: while the transport holds more than its high-water mark, the
    # client must take some of it within SEND_TIMEOUT, else the connection is closed.
    # Without it a client that asked for a large answer and never read held its
    # connection (a slot under MAX_CLIENT_CONNECTIONS, a slice lease, a fill reader) for
    # as long as it liked (helper-42). Progress is what the client's kernel took (the
    # transport's buffer and the kernel's send queue shrank), however long the response
    # takes. A reader slow enough is still cut, as by nginx: a receiver announces no
    # window until it has freed 1/16 of its buffer (Linux's __tcp_select_window), so with
    # a 6 MiB receive buffer and the default 60 s a reader below ~6 KiB/s looks stuck
    # (helper-44).

    # A large response pauses and resumes the transport about once per slice written, so
    # both stay an attribute write: the deadline, once armed, runs on until it passes, and
    # only then are the held bytes measured (a resume since then was progress).

    def pause_writing(self) -> None:
        if self._send_deadline is None:
            self._arm_send_deadline(self.loop.time())
        super().pause_writing()  # type: ignore[misc]  # the uvicorn protocol's

    def resume_writing(self) -> None:
        self._send_progress = True
        super().resume_writing()  # type: ignore[misc]

    def _arm_send_deadline(self, now: float) -> None:
        deadline = now + self.limits.send_timeout
        self._send_deadline = deadline
        self._send_held = self._held_for_client()
        self._send_progress = False
        self._wake_at(deadline)

    def _held_for_client(self) -> int:
        """Bytes written and not yet taken by the client: the transport's buffer plus the
        kernel's send queue (SIOCOUTQ). The transport's alone moves only when the kernel
        wakes it, after the client has drained a good part of the socket buffers (MiBs):
        a client reading 128 KiB/s could look stuck for longer than the timeout."""
        held = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
                held += int.from_bytes(queued, sys.byteorder, signed=True)
            except (OSError, ValueError, AttributeError):
                pass  # the transport's buffer alone: the coarser measure
        return held

    def _send_deadline_passed(self, now: float) -> float | None:
        deadline = self._send_deadline
        if deadline is None or deadline > now:
            return deadline
        # A closing transport still counts: it holds what a `Connection: close` answer
        # left behind until the client takes it (helper-44: four such fast answers to
        # clients that never read filled a connection cap of 4 for good).
        if not self.transport.get_write_buffer_size():
            self._send_deadline = None
            return None
        held = self._held_for_client()
        if self._send_progress or held < self._send_held:  # it took some: a new period
            self._arm_send_deadline(now)
            return self._send_deadline
        self._send_deadline = None
        self.send_expired = True
        if self.refusals is not None:
            self.refusals.send_timed_out(self.client, held)
        self._cut_for_send_timeout()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # A reset, not a close: the kernel would otherwise keep the orphaned socket and
            # its MiBs of queued bytes, trickling them to a client that does not read
            # (nginx's reset_timedout_connection).
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        return None

    def _cut_for_send_timeout(self) -> None:
        """Before the abort: say in the writing response's access line why it was cut."""
        cycle = self._writing_cycle()
        log: Any = None if cycle is None else cycle.scope.get(SCOPE_KEY)
        if log is not None and log.aborted is None:
            log.aborted = SEND_TIMEOUT_CUT

    def _writing_cycle(self) -> Any:
        """The request whose response is being written: uvicorn's ``cycle`` (the newest;
        a protocol that runs pipelined requests says which one runs)."""
        return getattr(self, "cycle", None)
