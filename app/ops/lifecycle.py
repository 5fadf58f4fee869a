"""Process state the admin routes report (starting, ready, draining), and clean startup failures."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("slicecache")


@dataclass
class Lifecycle:
    ready: bool = False
    draining: bool = False
    active_requests: int = 0

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        self.active_requests -= 1

    def start_draining(self, seconds: float) -> None:
        self.draining = True
        log.info(
            f"draining: readyz answers 503, requests still served for {seconds:g} s",
            extra={"fields": {"event": "drain_start", "active_requests": self.active_requests}},
        )

    def end_draining(self, grace_seconds: float) -> None:
        log.info(
            f"drained: no longer accepting; {self.active_requests} in-flight requests get "
            f"up to {grace_seconds:g} s",
            extra={"fields": {"event": "drain_end", "active_requests": self.active_requests}},
        )

    @property
    def accepting(self) -> bool:
        """What readyz answers: ready and not draining."""
        return self.ready and not self.draining


class StartupError(Exception):
    """An operator-facing reason the app cannot start (L2 device missing, locked, ...).

    Its text is the whole report: :class:`StartupFailureReporter` sends it to the server
    instead of a traceback.
    """


class _DropUvicornEcho(logging.Filter):
    """uvicorn's own 'Application startup failed. Exiting.' after our line says it twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Application startup failed. Exiting."


class StartupFailureReporter:
    """ASGI middleware: a :class:`StartupError` in the lifespan becomes one log line.

    Starlette reports any lifespan failure as a formatted traceback, which uvicorn logs; a
    missing L2 directory is not a bug, so the server gets the error's text alone, and
    uvicorn then exits non-zero (the console script with status 3, as uvicorn's CLI).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def reporting_send(message: Message) -> None:
            # Starlette sends startup.failed from inside its ``except`` block, so the
            # exception being handled is the one that failed the startup.
            error = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(error, StartupError):
                logging.getLogger("uvicorn.error").addFilter(_DropUvicornEcho())
                message = {"type": message["type"], "message": f"slicecache: {error}"}
            await send(message)

        try:
            await self.app(scope, receive, reporting_send)
        except StartupError:
            # Already reported: re-raised, uvicorn would log it again with a traceback.
            return
