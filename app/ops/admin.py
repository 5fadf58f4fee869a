"""Admin routes under the admin prefix: healthz, readyz, metrics, stats. Never forwarded.

With ``SLICECACHE_ADMIN_PORT`` they answer only on that port; with
``SLICECACHE_ADMIN_ALLOW_NETWORKS`` only to clients in those networks.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable

from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from app.edge.asgi_io import send_json, send_text, send_whole
from app.edge.clientaddr import client_of
from app.ops.lifecycle import Lifecycle

AsgiHandler = Callable[[Scope, Receive, Send], Awaitable[None]]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class AdminGuard:
    """Who may reach the admin routes: the right port, and an allowed client network."""

    def __init__(self, admin_port: int, networks: list[str]) -> None:
        self.admin_port = admin_port
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def on_admin_port(self, scope: Scope) -> bool:
        server = scope.get("server")
        return bool(self.admin_port) and server is not None and server[1] == self.admin_port

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        if self.admin_port and not self.on_admin_port(scope):
            return 404, "Not Found: admin routes are served on the admin port"
        if self.networks:
            client = client_of(scope)  # the TCP peer, or whom a trusted proxy names
            try:
                address = ipaddress.ip_address(client) if client else None
            except ValueError:
                address = None
            if address is None or not any(address in net for net in self.networks):
                return 403, "Forbidden: admin routes are restricted to configured networks"
        return None


class _Guarded:
    """A raw ASGI handler behind the admin guard."""

    def __init__(self, handler: AsgiHandler, guard: AdminGuard) -> None:
        self.handler = handler
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.guard.refusal(scope)
        if refusal is not None:
            await send_text(send, *refusal)
            return
        await self.handler(scope, receive, send)


def routes(
    prefix: str,
    lifecycle: Lifecycle,
    guard: AdminGuard,
    *,
    metrics: Callable[[], bytes],
    stats: Callable[[], dict[str, object]],
) -> list[BaseRoute]:
    async def healthz(scope: Scope, receive: Receive, send: Send) -> None:
        await send_text(send, 200, "ok")

    async def readyz(scope: Scope, receive: Receive, send: Send) -> None:
        if lifecycle.accepting:
            await send_text(send, 200, "ready")
        else:
            await send_text(send, 503, "draining" if lifecycle.draining else "starting")

    async def metrics_route(scope: Scope, receive: Receive, send: Send) -> None:
        await send_whole(send, 200, metrics(), PROMETHEUS_TEXT)

    async def stats_route(scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, json.dumps(stats(), indent=2, sort_keys=True).encode())

    async def unknown(scope: Scope, receive: Receive, send: Send) -> None:
        await send_text(send, 404, "Not Found: no such admin route")

    handlers: dict[str, AsgiHandler] = {
        "healthz": healthz,
        "readyz": readyz,
        "metrics": metrics_route,
        "stats": stats_route,
    }
    found: list[BaseRoute] = [
        Route(f"{prefix}/{name}", _Guarded(handler, guard), methods=["GET", "HEAD"])
        for name, handler in handlers.items()
    ]
    found.append(Route(f"{prefix}/{{rest:path}}", _Guarded(unknown, guard), methods=None))
    found.append(Route(prefix, _Guarded(unknown, guard), methods=None))
    return found
