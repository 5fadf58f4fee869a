"""Run an ASGI app under a real uvicorn server on an ephemeral loopback port, in a thread.

    with run_asgi_in_thread(app) as base_url:
        httpx.get(f"{base_url}/files/1k.bin")

The server has its own event loop in its own thread, so tests can drive it with sync or
async clients alike; uvicorn installs no signal handlers outside the main thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def run_asgi_in_thread(
    app: Any, *, startup_timeout: float = 10.0, shutdown_timeout: float = 10.0, **config: Any
) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1:<free port>; yield ``http://127.0.0.1:<port>``.

    ``config`` overrides uvicorn.Config (e.g. ``http="h11"``). Responses still in flight
    at exit get ``timeout_graceful_shutdown`` (default 1 s) before uvicorn cancels them,
    then the thread is joined; a server that still will not stop is force-exited.
    """
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,  # the kernel picks a free port: parallel test runs never collide
        "log_level": "warning",
        "access_log": False,
        "lifespan": "auto",
        "timeout_graceful_shutdown": 1.0,
    }
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, name="uvicorn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    # Startup failures (port in use, lifespan error) end the thread via SystemExit.
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(shutdown_timeout)
            raise RuntimeError("uvicorn test server did not start")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(shutdown_timeout)
