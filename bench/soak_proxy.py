"""The proxy as the soak test runs it: the console script's server, plus one state route.

``python -m bench.soak_proxy`` reads the same ``SLICECACHE_*`` settings as ``slicecache``
and serves ``GET /_soak/state``: what must be back to zero when the proxy is idle (byte
budget, fills, tasks, origin connections in use, file descriptors) and its memory, read
from inside the process so that the soak needs no hook in the product.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from starlette.types import Receive, Scope, Send

from app.main import create_app
from app.ops.accesslog import configure_logging
from app.ops.cli import listening_socket, server_for
from settings import load_settings

STATE_PATH = "/_soak/state"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _transports(runtime: Any) -> tuple[Any, Any]:
    """(aiohttp's connector, the direct slice client) under the wrapping transports
    (ObservedTransport keeps the real one as ``inner``, SliceRouting routes to ``direct``
    and ``general``): unwrapped until they show; None for what is not there."""
    transport = getattr(runtime.upstream, "_transport", None)
    for _ in range(8):
        if transport is None or hasattr(transport, "direct") or hasattr(transport, "_connector"):
            break
        transport = getattr(transport, "inner", None)
    direct = getattr(transport, "direct", None)
    general = getattr(transport, "general", transport)
    return getattr(general, "_connector", None), direct


def _origin_connections(runtime: Any) -> tuple[int, int]:
    """Origin connections (handed out to a request and not yet given back, kept alive in
    a pool for the next request) over both clients; -1 where they cannot be read."""
    connector, direct = _transports(runtime)
    acquired = getattr(connector, "_acquired", None)
    conns = getattr(connector, "_conns", None)
    if acquired is None or conns is None:
        return -1, -1
    in_use, idle = len(acquired), sum(len(pooled) for pooled in conns.values())
    if direct is not None:
        pooled = sum(len(connections) for connections in direct._idle.values())
        in_use += direct._open - pooled  # open (or opening) and not idle in its pool
        idle += pooled
    return in_use, idle


def state(runtime: Any) -> dict[str, Any]:
    engine = runtime.directory.engine if runtime.directory is not None else None
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    in_use, idle = _origin_connections(runtime)
    return {
        "budget_in_use": engine.budget.in_use if engine is not None else 0,
        "budget_waiters": len(engine.budget._waiters) if engine is not None else 0,
        "fills": len(engine.fills) if engine is not None else 0,
        "tasks": len(tasks),
        # A task closing an async generator runs an ``async_generator_athrow``: no
        # __qualname__ (helper-59: the state route answered 500).
        "task_names": sorted({_task_name(task) for task in tasks})[:40],
        "origin_connections_in_use": in_use,
        "origin_connections_idle": idle,
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_anon_kib": _status_kib("RssAnon"),
        "rss_kib": _status_kib("VmRSS"),
        "hwm_kib": _status_kib("VmHWM"),
        "active_requests": runtime.lifecycle.active_requests,
    }


def _task_name(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", type(coro).__name__))


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings, configure_logs=False)
    runtime = app.state.runtime

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == STATE_PATH:
            body = json.dumps(state(runtime)).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    server = server_for(app, settings)
    server.config.app = with_state
    server.config.loaded = False
    server.run(sockets=[listening_socket(settings.host, settings.port)])


if __name__ == "__main__":
    main()
