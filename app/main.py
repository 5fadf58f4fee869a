"""The ASGI application: ``uvicorn app.main:app`` (settings from SLICECACHE_* variables).

``create_app(settings)`` builds a fresh app (tests use it); the module attribute ``app`` is
built on first access from the environment, so importing this module never reads it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app import admin
from app.accesslog import AccessLogMiddleware, configure_logging
from app.asgi_io import send_text
from app.context import RequestContext
from app.fills import ByteBudget
from app.httpcache.freshness import FreshnessPolicy
from app.lifecycle import Lifecycle
from app.objects import ObjectDirectory
from app.proxy import pass_through
from app.sliced import serve_sliced
from app.slicer import SliceEngine
from app.upstream import UpstreamClient, UpstreamTimeouts, default_transport
from cache.memory import MemoryStore
from cache.tiered import TieredStore
from settings import Settings, load_settings

TransportFactory = Callable[[Settings], httpx.AsyncBaseTransport]


@dataclass
class Runtime:
    """Everything a request handler needs, opened by the lifespan and closed by it."""

    settings: Settings
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    upstream: UpstreamClient | None = None
    store: TieredStore | None = None
    directory: ObjectDirectory | None = None
    slice_patterns: list[re.Pattern[str]] = field(default_factory=list)

    def sliceable(self, ctx: RequestContext) -> bool:
        """GET/HEAD of a matching path, without a body or credentials, with caching on."""
        if self.directory is None or ctx.method not in ("GET", "HEAD") or ctx.has_body:
            return False
        if self.slice_patterns:
            return any(pattern.search(ctx.path) for pattern in self.slice_patterns)
        return True

    def object_key(self, ctx: RequestContext) -> str:
        """What the origin sees: its scheme, the Host it is sent, and the request target."""
        assert self.upstream is not None
        if self.settings.preserve_host and (host := ctx.header("host")):
            scheme = self.upstream.base_url.split("://", 1)[0]
            return f"{scheme}://{host}{ctx.target}"
        return self.upstream.base_url + ctx.target


class ProxyEndpoint:
    """The catch-all route: every method, every path outside the admin prefix."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        upstream = runtime.upstream
        if upstream is None:
            await send_text(send, 503, "Service Unavailable: starting")
            return
        ctx = RequestContext.from_scope(scope)
        runtime.lifecycle.request_started()
        preserve_host = runtime.settings.preserve_host
        try:
            if runtime.directory is not None and runtime.sliceable(ctx):
                await serve_sliced(
                    ctx,
                    receive,
                    send,
                    runtime.directory,
                    runtime.object_key(ctx),
                    preserve_host=preserve_host,
                )
            else:
                await pass_through(ctx, receive, send, upstream, preserve_host=preserve_host)
        finally:
            runtime.lifecycle.request_finished()


def create_app(
    settings: Settings,
    *,
    transport_factory: TransportFactory | None = None,
    configure_logs: bool = True,
) -> Starlette:
    runtime = Runtime(
        settings=settings,
        slice_patterns=[re.compile(pattern) for pattern in settings.slice_patterns],
    )
    make_transport = transport_factory or (lambda s: default_transport(s.upstream_pool_size))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level)
        timeouts = UpstreamTimeouts(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            total=settings.total_timeout or None,
        )
        runtime.upstream = UpstreamClient(
            settings.upstream_base_url, timeouts, make_transport(settings)
        )
        if settings.enable_cache:
            runtime.store = TieredStore(
                MemoryStore(settings.l1_cache_size_bytes),
                None,
                queue_size=settings.write_behind_queue_size,
            )
            engine = SliceEngine(
                upstream=runtime.upstream,
                store=runtime.store,
                slice_size=settings.slice_size,
                lookahead=settings.max_concurrent_subrequests,
                max_retries=settings.max_retries,
                budget=ByteBudget(settings.max_in_flight_bytes),
            )
            policy = FreshnessPolicy(
                default_ttl=settings.cache_ttl,
                default_stale_if_error=settings.stale_if_error_seconds,
            )
            runtime.directory = ObjectDirectory(engine, runtime.store, policy)
            engine.on_object_changed = runtime.directory.forget
        runtime.lifecycle.ready = True
        try:
            yield
        finally:
            runtime.lifecycle.ready = False
            if runtime.directory is not None:
                await runtime.directory.close()
                await runtime.directory.engine.close()
            if runtime.store is not None:
                await runtime.store.close()
            await runtime.upstream.aclose()

    routes = [
        *admin.routes(settings.admin_prefix, runtime.lifecycle),
        Route("/{path:path}", ProxyEndpoint(runtime), methods=None),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    app.add_middleware(AccessLogMiddleware)
    return app


_default_app: Starlette | None = None


def __getattr__(name: str) -> Starlette:
    """``app.main.app``: the app configured from the environment, built once on first use."""
    global _default_app
    if name != "app":
        raise AttributeError(name)
    if _default_app is None:
        _default_app = create_app(load_settings())
    return _default_app
