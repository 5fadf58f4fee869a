"""The ``slicecache`` console script: settings from the environment, uvicorn tuned for a proxy."""

from __future__ import annotations

import uvicorn

from app.accesslog import configure_logging
from app.main import create_app
from settings import load_settings


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # httptools parses ~3x cheaper than h11; uvloop is libuv's event loop.
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        # The TCP peer is appended to X-Forwarded-For as it is; uvicorn's proxy-headers
        # mode would replace it with the client's own claim.
        proxy_headers=False,
        log_config=None,
        server_header=False,
        date_header=True,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
