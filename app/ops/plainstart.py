"""``uvicorn app.main:app`` with no flags behaves as the ``slicecache`` console script.

uvicorn's CLI builds its Config before it imports the app, with defaults that are wrong for
this proxy: a second Date header (the app writes the origin's), a Server header, client
``X-Forwarded-For`` believed from 127.0.0.1, plain-text logs, a 5 s keep-alive, no drain on
SIGTERM and one listening port. When ``app.main.app`` is first looked up from inside
``uvicorn.Config.load`` (the CLI, ``uvicorn.run("app.main:app")``; gunicorn imports the app
itself and hands uvicorn the object), this module adjusts that Config and its Server
before they use any of it. An app object handed to uvicorn directly (tests, the console
script, gunicorn) is left alone.

What cannot be adjusted is said in the README ("Running it").
"""

from __future__ import annotations

import logging
import math
import sys
import time
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from app.edge.h11server import H11EdgeProtocol
from app.edge.httpserver import HttpProtocol
from app.ops.accesslog import configure_logging
from app.ops.lifecycle import Lifecycle
from settings import Settings

log = logging.getLogger("slicecache")

EDGE_PROTOCOLS = (HttpProtocol, H11EdgeProtocol)


def _uvicorn_frames() -> tuple[uvicorn.Config | None, uvicorn.Server | None]:
    """The Config being loaded and the Server serving it, if uvicorn is importing us now."""
    config: uvicorn.Config | None = None
    server: uvicorn.Server | None = None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        name = frame.f_code.co_name
        # uvicorn.run imports the app once early (load_app) and again in Config.load.
        if config is None and name in ("load", "load_app") and isinstance(owner, uvicorn.Config):
            config = owner
        elif server is None and name == "_serve" and isinstance(owner, uvicorn.Server):
            server = owner
        frame = frame.f_back
    return config, server


def adopt_uvicorn(app: Starlette, settings: Settings) -> bool:
    """Tune the uvicorn that is importing ``app``; False when nobody is (nothing done).

    Called on every lookup of ``app.main.app``: uvicorn.run imports the app before it
    creates its Server, and again from inside the Server; each part is done once.
    """
    config, server = _uvicorn_frames()
    if config is None:
        return False
    if not getattr(config, "_slicecache_adopted", False):
        config._slicecache_adopted = True  # type: ignore[attr-defined]
        _adopt_config(config, settings)
    if server is not None and not getattr(server, "_slicecache_adopted", False):
        server._slicecache_adopted = True  # type: ignore[attr-defined]
        lifecycle: Lifecycle = app.state.runtime.lifecycle
        _drain_on_signal(server, lifecycle, settings)
        if settings.admin_port:
            _listen_on_admin_port(server, config, settings.admin_port)
    return True


def _adopt_config(config: uvicorn.Config, settings: Settings) -> None:
    # Logs: uvicorn configured plain-text handlers in Config.__init__; JSON from here on,
    # which is before uvicorn's first line ("Started server process").
    configure_logging(settings.log_level)
    config.access_log = False
    # Date: the app writes it (the origin's on relayed and cached responses); no Server.
    config.date_header = False
    config.server_header = False
    config.encoded_headers = [h for h in config.encoded_headers if h[0] != b"server"]
    if config.http in ("auto", "httptools") and _has_httptools():
        config.http = HttpProtocol  # httptools, and it dates uvicorn's own 400s
    elif config.http in ("auto", "h11"):
        config.http = H11EdgeProtocol  # the same edge protections over h11
    elif not (isinstance(config.http, type) and issubclass(config.http, EDGE_PROTOCOLS)):
        # A protocol class of the operator's own: say it runs without the edge
        # protections rather than silently (a slowloris would hold connections forever).
        log.warning(
            "--http %s: no request head timeout, no client connection cap, and no early "
            "414/431 (they live in app.edge.httpserver and app.edge.h11server)",
            config.http,
        )
    # The TCP peer stays the client; SLICECACHE_TRUSTED_PROXIES decides whom to believe.
    config.proxy_headers = False
    config.timeout_keep_alive = math.ceil(settings.keep_alive_seconds)
    if config.timeout_graceful_shutdown is None:  # --timeout-graceful-shutdown wins
        # As the console script: seconds as they are, 0 = no grace (None would be no limit).
        config.timeout_graceful_shutdown = settings.shutdown_grace_seconds  # type: ignore[assignment]
    if settings.admin_port and (config.uds or config.fd is not None):
        _refuse("SLICECACHE_ADMIN_PORT needs --host/--port listening (not --uds or --fd)")
    if settings.admin_port and (config.workers > 1 or config.reload):
        _refuse("SLICECACHE_ADMIN_PORT with --workers/--reload: run `slicecache` instead")


def _has_httptools() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def _refuse(reason: str) -> None:
    print(f"slicecache: {reason}", file=sys.stderr)
    raise SystemExit(2)


def _listen_on_admin_port(server: uvicorn.Server, config: uvicorn.Config, admin_port: int) -> None:
    """A second listening socket for the admin routes, as the console script opens."""
    from app.ops.cli import listening_socket  # the console script's own binding

    original = server.startup

    async def startup(sockets: Any = None) -> None:
        if sockets is None:
            sockets = [
                listening_socket(config.host, config.port, "--port"),
                listening_socket(config.host, admin_port, "SLICECACHE_ADMIN_PORT"),
            ]
        await original(sockets=sockets)

    server.startup = startup  # type: ignore[method-assign]


def _drain_on_signal(server: uvicorn.Server, lifecycle: Lifecycle, settings: Settings) -> None:
    """First SIGTERM: readyz fails for DRAIN_SECONDS while requests are served; then stop.

    uvicorn's signal handler is already installed (it only sets ``should_exit``); its main
    loop asks ``on_tick`` every 0.1 s whether to stop, so the drain lives there.
    """
    original = server.on_tick
    deadline: float | None = None

    async def on_tick(counter: int) -> bool:
        nonlocal deadline
        if server.should_exit and deadline is None and settings.drain_seconds > 0:
            deadline = time.monotonic() + settings.drain_seconds
            lifecycle.start_draining(settings.drain_seconds)
            server.should_exit = False
            # uvicorn re-raises the signal after shutdown, so the process would die of it
            # instead of exiting 0 as the console script does.
            server._captured_signals.clear()
        if deadline is not None and time.monotonic() >= deadline and not server.should_exit:
            lifecycle.end_draining(settings.shutdown_grace_seconds)
            server.should_exit = True
        return await original(counter)

    server.on_tick = on_tick  # type: ignore[method-assign]
