"""HTTP PURGE: drop one object (every slice, variant and tier), a prefix, or everything.

``PURGE /path?query`` removes that object; ``X-Purge-Prefix: true`` (or a target ending
in ``*``) removes every object whose path starts with the target; ``X-Purge-All: true``
empties the cache. The answer is JSON ``{"purged": N, "scope": ..., "target": ...}``.
What the 200 reports as purged is never served afterwards: the directory forgets the
metadata, every tier deletes the keys, and fills or L2 writes still in flight are
discarded instead of stored (see the purge epochs of ``TieredStore``).
"""

from __future__ import annotations

import hmac
import json

from starlette.types import Send

from app.context import RequestContext
from app.edge.asgi_io import send_json, send_text
from app.engine.objects import ObjectDirectory
from app.ops.metrics import EngineCounters
from settings import PurgeSettings


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"1", "true", "yes", "on"}


def authorized(ctx: RequestContext, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time; no token = nobody."""
    presented = ctx.header("authorization") or ""
    scheme, _, credentials = presented.partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


async def handle_purge(
    ctx: RequestContext,
    send: Send,
    settings: PurgeSettings,
    directory: ObjectDirectory | None,
    object_key: str,
    counters: EngineCounters,
) -> None:
    if not settings.enabled:
        await send_text(
            send, 405, "Method Not Allowed: PURGE is disabled", [("allow", "GET, HEAD")]
        )
        return
    if not authorized(ctx, settings.auth_token):
        await send_text(
            send,
            401,
            "Unauthorized: PURGE needs a valid bearer token",
            [("www-authenticate", "Bearer")],
        )
        return
    ctx.log.cache = "PURGE"
    if _truthy(ctx.header("x-purge-all")):
        scope, target = "all", "*"
        purged = await directory.forget_all() if directory is not None else 0
    elif _truthy(ctx.header("x-purge-prefix")) or object_key.endswith("*"):
        scope, target = "prefix", object_key.removesuffix("*")
        purged = await directory.forget_prefix(target) if directory is not None else 0
    else:
        scope, target = "url", object_key
        purged = await directory.forget(target) if directory is not None else 0
    counters.purges[scope] += 1
    body = json.dumps({"purged": purged, "scope": scope, "target": target}).encode()
    await send_json(send, 200, body)
