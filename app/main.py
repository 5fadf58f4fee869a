"""The ASGI application: ``uvicorn app.main:app`` (settings from SLICECACHE_* variables).

``create_app(settings)`` builds a fresh app (tests use it); the module attribute ``app`` is
built on first access from the environment, so importing this module never reads it.
"""

from __future__ import annotations

import contextlib
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
from app.lifecycle import Lifecycle
from app.proxy import pass_through
from app.upstream import UpstreamClient, UpstreamTimeouts, default_transport
from settings import Settings, load_settings

TransportFactory = Callable[[Settings], httpx.AsyncBaseTransport]


@dataclass
class Runtime:
    """Everything a request handler needs, opened by the lifespan and closed by it."""

    settings: Settings
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    upstream: UpstreamClient | None = None


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
        try:
            await pass_through(
                ctx, receive, send, upstream, preserve_host=runtime.settings.preserve_host
            )
        finally:
            runtime.lifecycle.request_finished()


def create_app(
    settings: Settings,
    *,
    transport_factory: TransportFactory | None = None,
    configure_logs: bool = True,
) -> Starlette:
    runtime = Runtime(settings=settings)
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
        runtime.lifecycle.ready = True
        try:
            yield
        finally:
            runtime.lifecycle.ready = False
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
