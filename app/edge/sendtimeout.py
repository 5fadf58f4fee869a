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

# How often, per send timeout, a paused transport's held bytes are measured: the cut
# comes between one and 1 + 1/SEND_CHECKS_PER_TIMEOUT timeouts after the last progress.
SEND_CHECKS_PER_TIMEOUT = 10


class SendTimeout:
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    limits: Any
    refusals: Any
    client: tuple[str, int] | None
    # While writing is paused: when the held bytes are measured next, when the client
    # last took some of them, and how much was held (transport and kernel) at the last
    # measure.
    _send_check_at: float | None = None
    _send_taken_at = 0.0
    _send_held = 0
    _send_progress = False  # the transport resumed writing since the last measure
    send_expired = False  # closed by the send timeout
    # What the transport and the kernel held when the send timeout reset the connection:
    # discarded by the reset (SO_LINGER 0), never sent.
    send_discarded = 0

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
    # both stay an attribute write: once armed, the held bytes are measured every tenth
    # of the timeout (a resume since the last measure was progress), and the connection
    # is cut when none was seen for a whole timeout. Measured once per timeout instead,
    # a client whose kernel took a last gulp right after the pause (an autotuned receive
    # buffer) was cut after two (helper-73).

    def pause_writing(self) -> None:
        if self._send_check_at is None:
            now = self.loop.time()
            self._send_taken_at = now
            self._send_held = self._held_for_client()
            self._send_progress = False
            self._check_send_at(now)
        super().pause_writing()  # type: ignore[misc]  # the uvicorn protocol's

    def resume_writing(self) -> None:
        self._send_progress = True
        super().resume_writing()  # type: ignore[misc]

    def _check_send_at(self, now: float) -> float:
        timeout: float = self.limits.send_timeout
        check = min(now + timeout / SEND_CHECKS_PER_TIMEOUT, self._send_taken_at + timeout)
        self._send_check_at = check
        self._wake_at(check)
        return check

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
        check = self._send_check_at
        if check is None or check > now:
            return check
        # A closing transport still counts: it holds what a `Connection: close` answer
        # left behind until the client takes it (helper-44: four such fast answers to
        # clients that never read filled a connection cap of 4 for good).
        if not self.transport.get_write_buffer_size():
            self._send_check_at = None
            return None
        held = self._held_for_client()
        if self._send_progress or held < self._send_held:  # it took some
            self._send_taken_at = now
            self._send_progress = False
        self._send_held = held
        if now < self._send_taken_at + self.limits.send_timeout:
            return self._check_send_at(now)
        self._send_check_at = None
        self.send_expired = True
        self.send_discarded = held
        if self.refusals is not None:
            self.refusals.send_timed_out(self.client, held)
        self._cut_for_send_timeout(held)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # A reset, not a close: the kernel would otherwise keep the orphaned socket and
            # its MiBs of queued bytes, trickling them to a client that does not read
            # (nginx's reset_timedout_connection).
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        return None

    def _cut_for_send_timeout(self, held: int) -> None:
        """Before the abort: say in the writing response's access line why it was cut, and
        how many of its bytes the reset discards (``held``: the transport's and the
        kernel's), so that the line counts what reached the client's host, not what was
        handed to the kernel (helper-74: 4.1 MB logged, 128 KB received)."""
        cycle = self._writing_cycle()
        log: Any = None if cycle is None else cycle.scope.get(SCOPE_KEY)
        if log is not None:
            if log.aborted is None:
                log.aborted = SEND_TIMEOUT_CUT
            log.discarded = held

    def _writing_cycle(self) -> Any:
        """The request whose response is being written: uvicorn's ``cycle`` (the newest;
        a protocol that runs pipelined requests says which one runs)."""
        return getattr(self, "cycle", None)
