"""Shared fixtures: the real demo origin and the real proxy on loopback ports."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from app.edge.httpserver import HttpProtocol
from app.main import create_app
from bench.origin import OriginApp, create_origin_app
from settings import Settings
from tests.servers import run_asgi_in_thread

ProxyFactory = Callable[..., AbstractContextManager[str]]


class Origin:
    def __init__(self, app: OriginApp, url: str, fast_path: bool = True) -> None:
        self.app = app
        self.url = url
        self.fast_path = fast_path

    def requests_for(self, path: str) -> list[dict[str, Any]]:
        return [entry for entry in self.app.log_entries() if entry["path"] == path]

    def bytes_sent_for(self, path: str) -> int:
        return sum(entry["bytes_sent"] for entry in self.requests_for(path))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with ``BOTH_PATHS = True`` runs each test that uses the demo origin twice:
    with the protocol's fast path for plain fresh hits (app/fasthit.py) and without it
    (every request through the ASGI app), so both paths answer the same tests (issue 16).
    Each run has an origin of its own: tests count the origin's requests by path."""
    if getattr(metafunc.module, "BOTH_PATHS", False) and "origin" in metafunc.fixturenames:
        metafunc.parametrize("origin", [True, False], ids=["fast", "slow"], indirect=True)


@pytest.fixture(scope="session")
def origin(request: pytest.FixtureRequest) -> Iterator[Origin]:
    """The demo origin; ``fast_path``: what the ``proxy`` factory in front of it sets
    SLICECACHE_FAST_PATH to (see ``pytest_generate_tests``; by default on)."""
    app = create_origin_app()
    with run_asgi_in_thread(app) as url:
        yield Origin(app, url, getattr(request, "param", True))


@pytest.fixture
def proxy(origin: Origin) -> ProxyFactory:
    """``with proxy(slice_size=...) as url:`` runs a proxy in front of the demo origin."""

    @contextmanager
    def start(*, http_protocol: type = HttpProtocol, **overrides: Any) -> Iterator[str]:
        overrides.setdefault("upstream_address", origin.url)
        overrides.setdefault("fast_path", origin.fast_path)
        settings = Settings(**overrides)
        app = create_app(settings, configure_logs=False)
        # As the console script runs it: the app writes Date, the TCP peer is the client.
        with run_asgi_in_thread(
            app, proxy_headers=False, date_header=False, http=http_protocol
        ) as url:
            yield url

    return start


class ServerErrors:
    """uvicorn's error lines for responses an app left unfinished ("ASGI callable returned
    without completing response"): ``watch()`` once the server runs (its logging config,
    applied as it starts, drops handlers added before), then ``server_errors()``. The test
    origin runs in this process too and logs its deliberate faults on the same logger:
    those are not counted."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.logger = logging.getLogger("uvicorn.error")  # it does not propagate to root

    def watch(self) -> None:
        self.logger.addHandler(self.caplog.handler)

    def __call__(self) -> list[str]:
        return [
            r.getMessage()
            for r in self.caplog.records
            if r.name == self.logger.name and r.getMessage().startswith("ASGI callable returned")
        ]


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[ServerErrors]:
    errors = ServerErrors(caplog)
    try:
        yield errors
    finally:
        errors.logger.removeHandler(caplog.handler)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
