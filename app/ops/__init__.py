"""Operations: what an operator starts, asks, watches and purges.

- ``cli``         the ``slicecache`` console script (uvicorn tuned for a proxy, drain on
                  SIGTERM, the admin port); ``plainstart`` gives ``uvicorn app.main:app``
                  the same choices.
- ``admin``       healthz, readyz, metrics and stats under the admin prefix; ``lifecycle``
                  the process state they report (starting, ready, draining).
- ``purge``       HTTP PURGE of one object, a prefix, or everything (token auth).
- ``metrics``     the Prometheus registry; ``accesslog`` JSON logs and the access line.
  Warnings folded to one line per kind per interval: ``cache.ratelimit`` (the L2 tier
  logs through it too).
"""
