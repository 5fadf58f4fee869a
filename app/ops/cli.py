"""The ``slicecache`` console script: settings from the environment, uvicorn tuned for a proxy.

Graceful shutdown (what a load balancer needs): the first SIGTERM or SIGINT makes readyz
answer 503 while requests are still served for ``SLICECACHE_DRAIN_SECONDS``; then uvicorn
stops accepting, gives in-flight responses ``SLICECACHE_SHUTDOWN_GRACE_SECONDS``, and the
lifespan flushes the write-behind queue and syncs the L2 index. The process exits 0. A
second signal skips the drain.
"""

from __future__ import annotations

import math
import socket
import sys
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from app.edge.httpserver import HttpProtocol
from app.main import create_app
from app.ops.accesslog import configure_logging
from app.ops.lifecycle import Lifecycle
from cache.rawdisk import RawDiskError
from cache.rawdisk.preflight import check_device
from settings import Settings, load_settings


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        drain_seconds: float,
        grace_seconds: float = 0.0,
    ):
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_seconds = drain_seconds
        self.grace_seconds = grace_seconds
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded as a captured signal: uvicorn would re-raise it after shutdown and
        # the process would die of it instead of exiting 0.
        if self.drain_deadline is not None or self.drain_seconds <= 0:
            self.should_exit = True
            return
        self.lifecycle.start_draining(self.drain_seconds)
        self.drain_deadline = time.monotonic() + self.drain_seconds

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            if not self.should_exit:
                self.lifecycle.end_draining(self.grace_seconds)
                self.should_exit = True
            return True
        return await super().on_tick(counter)


def listening_socket(host: str, port: int, variable: str = "SLICECACHE_PORT") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:  # in use, not an address of this host...: one line, no traceback
        sock.close()
        reason = error.strerror or str(error)
        print(f"slicecache: cannot listen on {host}:{port} ({variable}): {reason}", file=sys.stderr)
        # 3, as uvicorn's own CLI exits when its server cannot start.
        raise SystemExit(3) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def server_for(app: Starlette, settings: Settings) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # httptools parses ~3x cheaper than h11 (this subclass dates uvicorn's own 400s);
        # uvloop is libuv's event loop.
        http=HttpProtocol,
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_config=None,
        # The TCP peer is appended to X-Forwarded-For as it is; uvicorn's proxy-headers
        # mode would replace it with the client's own claim.
        proxy_headers=False,
        server_header=False,
        # The app writes Date itself: the origin's on relayed and cached responses.
        date_header=False,
        # Seconds as they are: uvicorn annotates an int but hands it to asyncio.wait_for,
        # and 0 means no grace (int(0.5) or None made half a second an unbounded wait).
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
        timeout_keep_alive=math.ceil(settings.keep_alive_seconds),
    )
    lifecycle: Lifecycle = app.state.runtime.lifecycle
    return DrainingServer(
        config, lifecycle, settings.drain_seconds, settings.shutdown_grace_seconds
    )


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    if settings.enable_cache and settings.enable_l2_cache:
        try:  # before the server: a lifespan failure would be logged with a traceback
            check_device(settings.raw_disk_cache)
        except RawDiskError as error:
            # Exit 3, as uvicorn's own startup failure under plain ``uvicorn app.main:app``,
            # where the lifespan refuses the same device (app.main.open_l2) with one line.
            print(f"slicecache: cannot open the L2 device: {error}", file=sys.stderr)
            raise SystemExit(3) from None
    server = server_for(create_app(settings), settings)
    sockets = [listening_socket(settings.host, settings.port)]
    if settings.admin_port:
        # One server, two sockets: the app routes by the port a request came in on.
        sockets.append(
            listening_socket(settings.host, settings.admin_port, "SLICECACHE_ADMIN_PORT")
        )
    server.run(sockets=sockets)
    if not server.started:
        # The lifespan failed (the reason is already logged, one line): exit as uvicorn's
        # own CLI does, with status 3, so a supervisor sees a failed start.
        raise SystemExit(3)


if __name__ == "__main__":
    main()
