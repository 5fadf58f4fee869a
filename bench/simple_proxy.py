"""A deliberately naive, buffering reverse proxy: the baseline slicecache is compared with.

It reads the whole origin body into memory, then answers: TTFB = the full download, memory =
the file size (times the clients). No cache, no streaming, on purpose. Run it::

    python -m bench.simple_proxy --port 8090 --upstream http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
    }
)


def create_app(upstream: str) -> web.Application:
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def open_session(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(
            base_url=upstream, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=600)
        )

    async def close_session(app: web.Application) -> None:
        await app[session_key].close()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def relay(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.pop("Host", None)
        async with request.app[session_key].request(
            request.method, request.rel_url, headers=headers
        ) as upstream_response:
            body = await upstream_response.read()  # the whole file, before a byte goes out
            out = {
                k: v for k, v in upstream_response.headers.items() if k.lower() not in HOP_BY_HOP
            }
            return web.Response(status=upstream_response.status, body=body, headers=out)

    app = web.Application()
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_get("/_simple/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simple_proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--upstream", default="http://127.0.0.1:8081")
    args = parser.parse_args()
    web.run_app(create_app(args.upstream), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
