"""What every origin exchange tells the operator: latency, status class, failures.

:class:`ObservedTransport` wraps the origin client's transport (pass-through, probes and
slices all pass through it), so the upstream client and the slice engine need no
metrics or logging code of their own:

* ``slicecache_origin_response_seconds``: time to the origin's response headers;
* ``slicecache_origin_responses_total{status_class}``: answers by class, ``error`` for
  none at all;
* a rate-limited warning per failed exchange naming the origin, the request, the
  exception class and errno, and how many earlier attempts of the same request failed;
* the access line's ``upstream_ms``: the wait for the request's first origin answer, on
  every path (slice fetches run in tasks the request spawned, which share its context).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx

from app.context import RequestLog
from app.ops.metrics import Metrics
from app.upstream.direct import reads_into
from app.upstream.wire import target_of
from cache.ratelimit import RateLimitedLog

log = logging.getLogger("slicecache.origin")

# The request being served, set by the access-log middleware; tasks it spawns inherit it.
CURRENT_REQUEST: contextvars.ContextVar[RequestLog | None] = contextvars.ContextVar(
    "slicecache_request", default=None
)
# (request, failures so far) of the last failed exchange in this task: a retry of the
# same request in the same task (the slice engine retries in place) counts up.
_LAST_FAILURE: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "slicecache_origin_failure", default=None
)


def describe(error: BaseException) -> tuple[str, int | None]:
    """The exception class, and the errno of the OS error underneath it if there is one."""
    seen: BaseException | None = error
    errno = None
    for _ in range(8):  # causes chain through httpx, aiohttp and the socket layer
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno is not None:
            errno = seen.errno
            break
        seen = seen.__cause__ or seen.__context__
    return type(error).__name__, errno


class ObservedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        metrics: Metrics,
        origin: str,
        warnings: RateLimitedLog,
    ) -> None:
        self.inner = inner
        self.metrics = metrics
        self.origin = origin
        self.warnings = warnings

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.HTTPError as error:
            self._failed(request, error, time.perf_counter() - started)
            raise
        waited = time.perf_counter() - started
        self.metrics.origin_latency.observe(waited)
        self.metrics.count_origin_answer(f"{response.status_code // 100}xx")
        current = CURRENT_REQUEST.get()
        if current is not None and not current.upstream_seconds:
            current.upstream_seconds = waited
        # A body that breaks off (reset, truncated, read timeout) fails while it is read,
        # after this method returned: the same warning names it.
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _ObservedStream(
                response.stream, lambda error: self._failed(request, error, 0.0, answered=True)
            )
        return response

    def _failed(
        self,
        request: httpx.Request,
        error: BaseException,
        waited: float,
        answered: bool = False,
    ) -> None:
        if not answered:  # a broken body was already counted by its status class
            self.metrics.count_origin_answer("error")
        current = CURRENT_REQUEST.get()
        if current is not None and not current.upstream_seconds:
            current.upstream_seconds = waited
        target = target_of(request)
        ranges = request.headers.get("range", "")
        key = f"{request.method} {target} {ranges}"
        last = _LAST_FAILURE.get()
        earlier = last[1] if last is not None and last[0] == key else 0
        _LAST_FAILURE.set((key, earlier + 1))
        name, errno = describe(error)
        self.warnings.warning(
            f"origin_{name}",
            f"origin {self.origin} failed: {request.method} {target}"
            f"{' ' + ranges if ranges else ''}: {name}"
            f"{f' (errno {errno})' if errno is not None else ''}"
            f"{f', retry {earlier}' if earlier else ''}: {error}",
            origin=self.origin,
            method=request.method,
            target=target,
            range=ranges or None,
            error=name,
            errno=errno,
            retry=earlier,
            request_id=current.request_id if current is not None else None,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _ObservedStream(httpx.AsyncByteStream):
    """An origin response body that reports the error it breaks off with, then re-raises."""

    def __init__(
        self, inner: httpx.AsyncByteStream, on_error: Callable[[BaseException], None]
    ) -> None:
        self.inner = inner
        self.on_error = on_error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                yield chunk
        except httpx.HTTPError as error:
            self.on_error(error)
            raise

    def reads_into(self) -> bool:
        return reads_into(self.inner)

    async def read_into(self, view: memoryview) -> int:
        try:
            count: int = await self.inner.read_into(view)  # type: ignore[attr-defined]
            return count
        except httpx.HTTPError as error:
            self.on_error(error)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()
