"""The origin side: every byte the proxy asks of the origin goes through here.

- ``client``     httpx's request/response API over an aiohttp connection pool (keep-alive,
                 one retry of an idempotent request on a connection that failed first).
- ``framing``    the origin's Content-Length is trusted: bytes past it are dropped, short
                 bodies are errors, never a silently truncated object.
- ``transport``  what each exchange tells the operator: latency, status class, failures.
"""
