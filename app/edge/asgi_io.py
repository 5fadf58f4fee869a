"""Small ASGI helpers: the request body as a stream, client-disconnect detection, replies.

uvicorn silently drops what an app sends after the client has gone, so a proxy that only
wrote would keep reading the origin until the end of a multi-gigabyte body. A
:class:`DisconnectWatch` listens for ``http.disconnect`` and cancels the handler at once, so
the ``finally`` blocks close the upstream response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Send

from app.edge.headers import Headers, encode


class ClientGone(Exception):
    """The client closed its connection before we were done."""


class RequestBody:
    """The request body as an async iterator of chunks, read from ``receive`` on demand."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if not message.get("more_body", False):
                self.complete = True
            if chunk:
                yield chunk


class DisconnectWatch:
    """Cancels the current task when the client disconnects; use as an async context."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.client_gone = False
        self._task: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[object] | None = None

    async def __aenter__(self) -> DisconnectWatch:
        self._owner = asyncio.current_task()
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self.client_gone = True
                    if self._owner is not None:
                        self._owner.cancel()
                    return
        except asyncio.CancelledError:
            # Stopped by __aexit__, its owner: the task ends plainly. Ended cancelled, it
            # would keep its CancelledError, whose traceback holds this frame, which holds
            # the task: a reference cycle per response that took the request's whole state
            # (cycle, log, writer) into the oldest generation, where only a full
            # collection frees it (60-80 ms stalls every ~0.5 s under cold misses).
            return

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> bool:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if isinstance(exc, asyncio.CancelledError) and self.client_gone:
            # Our own cancellation: the client left. Swallow it so the handler ends cleanly.
            owner = self._owner
            if owner is not None:
                owner.uncancel()
            return True
        return False


async def send_start(send: Send, status: int, headers: Headers) -> None:
    if status in (204, 304):
        # An origin's Content-Length on a 204 (not allowed) or a 304 (the selected
        # representation's): uvicorn would wait for that many body bytes and raise.
        headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
    await send({"type": "http.response.start", "status": status, "headers": encode(headers)})


async def send_body(send: Send, chunk: bytes | memoryview, more: bool = True) -> None:
    message: Message = {"type": "http.response.body", "body": chunk, "more_body": more}
    await send(message)


async def send_text(
    send: Send, status: int, text: str, extra_headers: Headers | None = None
) -> None:
    """A short plain-text reply (errors, admin answers); never cached by anyone."""
    body = (text.rstrip("\n") + "\n").encode()
    await send_whole(send, status, body, "text/plain; charset=utf-8", extra_headers)


async def send_json(send: Send, status: int, body: bytes, extra: Headers | None = None) -> None:
    await send_whole(send, status, body, "application/json", extra)


async def send_whole(
    send: Send, status: int, body: bytes, content_type: str, extra: Headers | None = None
) -> None:
    """A small reply generated here, in one piece, not to be cached."""
    headers: Headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
        *(extra or []),
    ]
    await send_start(send, status, headers)
    await send_body(send, body, more=False)
