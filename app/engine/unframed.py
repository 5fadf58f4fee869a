"""An origin answer without Content-Length (chunked, or ended by closing): is it small?

The probe sizes an object from Content-Range or Content-Length. A small 200 (or 204)
sent chunked or close-delimited has neither; it used to be relayed and never stored.
:func:`peek_small_body` reads at most ``limit`` bytes of it: a body that ends within
them is complete and cacheable whole like any small response; a longer one is handed
back as a response that replays what was read and then streams the rest, for relaying.
Memory stays bounded by the probe's own slice budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that ends at once


class _Prefixed(httpx.AsyncByteStream):
    def __init__(self, prefix: bytes, rest: AsyncIterator[bytes], origin: httpx.Response):
        self._prefix = prefix
        self._rest = rest
        self._origin = origin

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._prefix:
            yield self._prefix
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        await self._origin.aclose()


async def peek_small_body(
    response: httpx.Response, limit: int
) -> tuple[httpx.Response, int | None]:
    """(a response to use instead of ``response``, the body size if it is complete within
    ``limit`` bytes, else None). Transport errors propagate, as from any read."""
    chunks = response.aiter_raw().__aiter__()
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            # A stream, not content=: httpx marks a content= body consumed, and the fill
            # reads the response raw.
            stream = _Prefixed(b"".join(parts), _nothing(), response)
            whole = httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=stream,
                request=response.request,
            )
            return whole, size
        parts.append(chunk)
        size += len(chunk)
    stream = _Prefixed(b"".join(parts), chunks, response)
    relay = httpx.Response(
        response.status_code, headers=response.headers, stream=stream, request=response.request
    )
    return relay, None
