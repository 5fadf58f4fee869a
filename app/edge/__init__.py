"""The HTTP edge: the client's connection and what it says, before any caching decision.

- ``httpserver``  uvicorn's httptools protocol with head limits (414/431 while the head is
                  still arriving), a head timeout (408), a connection cap, early hints.
- ``h11server``   the same protections over h11 (``--http h11``, or no httptools).
- ``sendtimeout`` nginx's send_timeout for both: a client that takes nothing is reset.
- ``headers``     field rewriting at the proxy boundary (hop-by-hop, Via, X-Forwarded-*).
- ``clientaddr``  who the client is (the TCP peer, or X-Forwarded-For from trusted proxies).
- ``ranges``      the client's Range / If-Range (RFC 9110 section 14), pure functions.
- ``interim``     the origin's 1xx answers relayed to the client.
- ``asgi_io``     small ASGI helpers: body streams, disconnect detection, short replies.
- ``writtenout``  how many bytes the transport still holds (the L2 lease writer waits on it).
- ``passthrough`` the uncached path: a request streamed to the origin and its answer back.
"""
