"""Admin routes under the admin prefix; never forwarded to the origin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from app.asgi_io import send_text
from app.lifecycle import Lifecycle

AsgiHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Asgi:
    """Wraps a coroutine function so Starlette treats it as a raw ASGI app."""

    def __init__(self, handler: AsgiHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


def routes(
    prefix: str,
    lifecycle: Lifecycle,
    extra: dict[str, AsgiHandler] | None = None,
) -> list[BaseRoute]:
    async def healthz(scope: Scope, receive: Receive, send: Send) -> None:
        await send_text(send, 200, "ok")

    async def readyz(scope: Scope, receive: Receive, send: Send) -> None:
        if lifecycle.accepting:
            await send_text(send, 200, "ready")
        elif lifecycle.draining:
            await send_text(send, 503, "draining")
        else:
            await send_text(send, 503, "starting")

    async def unknown(scope: Scope, receive: Receive, send: Send) -> None:
        await send_text(send, 404, "Not Found: no such admin route")

    handlers: dict[str, AsgiHandler] = {"healthz": healthz, "readyz": readyz, **(extra or {})}
    found: list[BaseRoute] = [
        Route(f"{prefix}/{name}", _Asgi(handler), methods=["GET", "HEAD"])
        for name, handler in handlers.items()
    ]
    found.append(Route(f"{prefix}/{{rest:path}}", _Asgi(unknown), methods=None))
    found.append(Route(prefix, _Asgi(unknown), methods=None))
    return found
