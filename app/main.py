"""The ASGI application: ``uvicorn app.main:app`` (settings from SLICECACHE_* variables).

``create_app(settings)`` builds a fresh app (tests use it); the module attribute ``app`` is
built on first access from the environment, so importing this module never reads it.

One module (~640 lines) on purpose: the composition root (settings to runtime, dispatch,
lifespan); each part is small and used only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.context import RequestContext
from app.edge.asgi_io import send_body, send_start, send_text
from app.edge.clientaddr import TrustedProxies
from app.edge.finalrecipient import final_answer
from app.edge.headers import Headers, parse_host
from app.edge.interim import relay_interim_to
from app.edge.passthrough import pass_through
from app.edge.target import absolute_target, request_target
from app.edge.writtenout import WriteWatch
from app.engine.budget import ByteBudget
from app.engine.heaptrim import HEAP_TRIM_INTERVAL_SECONDS, HeapTrim
from app.engine.objects import ObjectDirectory
from app.engine.pressure import PressureWatch
from app.engine.sliced import serve_sliced
from app.engine.slicer import SliceEngine
from app.fasthit import FastHits
from app.httpcache.freshness import FreshnessPolicy
from app.httpcache.invalidation import SAFE_METHODS, invalidated_uris, normalize_percent_encoding
from app.httpcache.targeted import targeted_fields
from app.ops import admin
from app.ops.accesslog import (
    SHUTDOWN_CUT,
    AccessLogMiddleware,
    AccessLogWriter,
    configure_logging,
    http_date_now,
)
from app.ops.lifecycle import Lifecycle, StartupError, StartupFailureReporter
from app.ops.metrics import Metrics
from app.ops.plainstart import adopt_uvicorn
from app.ops.purge import handle_purge
from app.ops.refusals import EdgeRefusalLog
from app.upstream.client import UpstreamClient, UpstreamTimeouts, default_transport
from app.upstream.transport import ObservedTransport
from cache.memory import MemoryStore
from cache.ratelimit import RateLimitedLog
from cache.rawdisk import RawDiskError, RawDiskStore
from cache.tiered import TieredStore
from settings import Settings, format_size, load_settings

log = logging.getLogger("slicecache")

TransportFactory = Callable[[Settings], httpx.AsyncBaseTransport]
L1_COUNTS = frozenset({"hits", "misses", "rejected", "expired", "evictions"})


@dataclass
class Runtime:
    """Everything a request handler needs, opened by the lifespan and closed by it."""

    settings: Settings
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    metrics: Metrics = field(default_factory=Metrics)
    upstream: UpstreamClient | None = None
    store: TieredStore | None = None
    directory: ObjectDirectory | None = None
    slice_patterns: list[re.Pattern[str]] = field(default_factory=list)
    # The protocol's synchronous answer to a plain fresh hit (app/fasthit.py), or None.
    fast_hit: FastHits | None = None
    # Where the protocol reports the heads it refuses (counted and logged, rate-limited).
    edge_refusals: EdgeRefusalLog | None = None
    access_log: AccessLogWriter = field(default_factory=AccessLogWriter)

    def sliceable(self, ctx: RequestContext) -> bool:
        """GET/HEAD of a matching path, without a body or credentials, with caching on."""
        if self.directory is None or ctx.method not in ("GET", "HEAD") or ctx.has_body:
            return False
        if self.slice_patterns:
            return any(pattern.search(ctx.path) for pattern in self.slice_patterns)
        return True

    def object_key(self, ctx: RequestContext) -> str:
        """What the origin sees: its scheme, the Host it is sent, and the request target.

        Built from parts, in ``normalize_uri``'s shape (``scheme://host:port/path?query``,
        percent-encodings normalized: one entry for every spelling), never by parsing a
        concatenation: a Host of ``victim.example#`` would turn the target into a fragment
        and name victim's entry. ``ProxyEndpoint`` has refused every Host that is not
        ``uri-host[:port]`` before a key is asked for.
        """
        return self.key_for(ctx.header("host"), ctx.path, ctx.target)

    def key_for(self, host_field: str | None, path: str, target: str) -> str:
        """:meth:`object_key` from the parts it reads (the fast path has no context)."""
        assert self.upstream is not None
        scheme, host, port = origin_parts(self.upstream.base_url)
        if self.settings.preserve_host and host_field:
            parsed = parse_host(host_field)
            if parsed is not None:
                host, port = parsed[0], parsed[1] or DEFAULT_PORTS[scheme]
        rooted = path if path.startswith("/") else f"/{path}"
        return f"{scheme}://{host}:{port}{normalize_percent_encoding(rooted + target[len(path) :])}"

    async def invalidate_after(self, ctx: RequestContext, answer: tuple[int, Headers]) -> None:
        """RFC 9111 4.4: a successful unsafe request invalidates what it may have changed."""
        if self.directory is None:
            return
        status, headers = answer
        for uri in invalidated_uris(ctx.method, status, self.object_key(ctx), headers):
            await self.directory.forget(uri)

    def figures(self) -> dict[str, float]:
        """Engine and store figures exported as ``slicecache_*`` at scrape time."""
        figures: dict[str, float] = {}
        if self.directory is not None:
            budget = self.directory.engine.budget
            figures["in_flight_bytes"] = float(budget.in_use)
            figures["in_flight_limit_bytes"] = float(budget.capacity)
            figures["slices_filling"] = float(len(self.directory.engine.fills))
        if self.store is not None:
            counters = self.store.counters
            figures["write_behind_queue_slices"] = float(self.store.queue_depth)
            figures["write_behind_dropped_total"] = float(counters["write_behind_dropped"])
            figures["write_behind_written_total"] = float(counters["write_behind_written"])
            figures["l2_declined_total"] = float(counters["l2_declined"])
            figures["l2_errors_total"] = float(counters["l2_errors"])
            if self.store.l1 is not None:
                for key, value in self.store.l1.stats().items():
                    # Lifetime counts are counters (``_total``); sizes are gauges.
                    counted = key in L1_COUNTS
                    figures[f"l1_{key}{'_total' if counted else ''}"] = value
        figures["active_requests"] = float(self.lifecycle.active_requests)
        return figures

    def stats(self) -> dict[str, object]:
        """What ``<admin>/stats`` answers: tiers, usage, hit ratios, top-level config."""
        m = self.metrics
        served = m.hits + m.misses
        settings = self.settings
        tiers: dict[str, object] = {}
        if self.store is not None:
            if self.store.l1 is not None:
                tiers["l1"] = self.store.l1.stats()
            if self.store.l2 is not None:
                tiers["l2"] = self.store.l2.stats()
            tiers["write_behind"] = {
                "queue_depth": self.store.queue_depth,
                **self.store.counters,
            }
        return {
            "ready": self.lifecycle.accepting,
            "draining": self.lifecycle.draining,
            "active_requests": self.lifecycle.active_requests,
            "requests": {"hits": m.hits, "misses": m.misses},
            "hit_ratio": (m.hits / served) if served else None,
            "slices": {**m.counters.slices, **m.slice_hits()},
            "upstream": {
                "requests": m.counters.upstream_requests,
                "bytes": m.counters.upstream_bytes,
                "retries": m.counters.retries,
                "errors": dict(m.counters.errors),
            },
            "purges": dict(m.counters.purges),
            "tiers": tiers,
            "config": {
                "upstream": settings.upstream_base_url,
                "slice_size": settings.slice_size,
                "max_concurrent_subrequests": settings.max_concurrent_subrequests,
                "enable_cache": settings.enable_cache,
                "enable_l2_cache": settings.enable_l2_cache,
                "l1_cache_size_bytes": settings.l1_cache_size_bytes,
                "l2_total_size": settings.raw_disk_cache.total_size
                if settings.enable_l2_cache
                else 0,
                "cache_ttl": settings.cache_ttl,
                "purge_enabled": settings.purge.enabled,
            },
        }


class ProxyEndpoint:
    """The catch-all route: every method, every path outside the admin prefix."""

    def __init__(self, runtime: Runtime, guard: admin.AdminGuard) -> None:
        self.runtime = runtime
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        upstream = runtime.upstream
        if upstream is None:
            await send_text(send, 503, "Service Unavailable: starting")
            return
        if self.guard.on_admin_port(scope):
            await send_text(send, 404, "Not Found: this port serves only the admin routes")
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            # After a refused head the rest of the connection cannot be trusted (an unread
            # or ambiguously framed body): answer, then close.
            await send_text(send, *refusal, [("connection", "close")])
            return
        final = final_answer(scope)  # may decrement Max-Forwards in scope for forwarding
        if final is not None:
            length = ("content-length", str(len(final.body)))
            await send_start(
                send, final.status, [length, ("cache-control", "no-store")] + final.headers
            )
            head = scope["method"] == "HEAD"  # a HEAD * gets the 400's head alone
            await send_body(send, b"" if head else final.body, more=False)
            return
        ctx = RequestContext.from_scope(scope)
        relay_interim_to(scope, send)  # the origin's 103s go to this client (app.edge.interim)
        runtime.lifecycle.request_started()
        preserve_host = runtime.settings.preserve_host
        try:
            if ctx.method == "PURGE":
                await handle_purge(
                    ctx,
                    send,
                    runtime.settings.purge,
                    runtime.directory,
                    runtime.object_key(ctx),
                    runtime.metrics.counters,
                )
            elif runtime.directory is not None and runtime.sliceable(ctx):
                await serve_sliced(
                    ctx,
                    receive,
                    send,
                    runtime.directory,
                    runtime.object_key(ctx),
                    preserve_host=preserve_host,
                )
            else:
                answer = await pass_through(
                    ctx, receive, send, upstream, preserve_host=preserve_host
                )
                if answer is not None and ctx.method not in SAFE_METHODS:
                    await runtime.invalidate_after(ctx, answer)
        except asyncio.CancelledError as cancel:
            watch = ctx.written_out
            if watch is None or not _cancelled_by_shutdown(cancel, runtime.lifecycle):
                raise
            await _end_for_shutdown(ctx, send, watch)
        finally:
            runtime.lifecycle.request_finished()

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        """A short 4xx for what must not be forwarded: a bad Host, oversized heads (or a 505
        for an HTTP version that is not 1.x).

        The protocol (``app/edge/httpserver.py``) refuses oversized heads as they arrive; this
        is the same rule for any other server the app runs under.
        """
        if scope.get("http_version", "1.1") not in ("1.1", "1.0"):
            # RFC 9110 15.6.6 (h11 reads HTTP/2.0 in a request line; httptools' edge
            # refuses it before the app runs).
            return 505, "HTTP Version Not Supported"
        settings = self.runtime.settings
        # (A server that gives no raw_path gives a path in the origin form.)
        raw_path = request_target(scope) or b"/"
        if target_bytes(raw_path, scope) > settings.max_request_target_bytes:
            return 414, "URI Too Long"
        if raw_path[:1] != b"/" and raw_path != b"*":
            # The edges make an absolute-form target the origin form (app/edge/target.py)
            # unless it names a user (RFC 9110 4.2.4) or is over the limit; any other form
            # (authority form, a bare name) is not a request this proxy can route.
            absolute = absolute_target(raw_path)
            if absolute is not None and absolute.userinfo:
                return 400, "Bad Request: userinfo in the request target"
            return 400, "Bad Request: request target not in origin or absolute form"
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) > 1:
            return 400, "Bad Request: more than one Host field"  # RFC 9112 3.2
        if not hosts and scope.get("http_version", "1.1") == "1.1":
            return 400, "Bad Request: no Host field"
        if hosts and parse_host(hosts[0].decode("latin-1")) is None:
            return 400, "Bad Request: Host is not uri-host[:port]"
        codings = [
            coding.strip().lower()
            for name, value in scope["headers"]
            if name == b"transfer-encoding"
            for coding in value.split(b",")
            if coding.strip()
        ]
        if codings and scope.get("http_version") == "1.0":
            # RFC 9112 6.1: its framing is faulty; a hop before us that reads HTTP/1.0 as
            # having no chunked framing would see another request boundary (nginx: 400).
            return 400, "Bad Request: Transfer-Encoding in an HTTP/1.0 request"
        if codings and any(name == b"content-length" for name, _ in scope["headers"]):
            # RFC 9112 6.1: framed two ways at once (how requests are smuggled); a server
            # may refuse it and must close after. httptools refuses it in the parser; h11
            # frames by chunked and keeps the Content-Length, which would be forwarded
            # beside the de-chunked body.
            return 400, "Bad Request: both Transfer-Encoding and Content-Length"
        if codings and codings[-1] != b"chunked":
            # RFC 9112 6.3: no knowable length; a MUST 400 and close (httptools' edge refuses
            # it at the head, before the parser fails it: chunked_last).
            return 400, "Bad Request: final transfer coding not chunked"
        if codings and codings != [b"chunked"]:
            # RFC 9112 6.1: the parser decodes chunked only; forwarded without the other
            # codings' names, a gzip-coded body would reach the origin as a plain one.
            return 501, "Not Implemented: transfer coding other than chunked"
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if header_bytes > settings.max_header_bytes:
            return 431, "Request Header Fields Too Large"
        return None


def target_bytes(raw_path: bytes, scope: Scope) -> int:
    """The request target's length as the client sent it: the path, and the query with
    its "?" (helper-55: h11's edge let one byte past the limit httptools' edge counts)."""
    query = scope.get("query_string", b"")
    return len(raw_path) + (len(query) + 1 if query else 0)


class RawPathRouting:
    """Route on the path as the client sent it, percent-encoding included.

    The proxy forwards that raw path, slice patterns match it, and an external filter on
    the admin prefix sees it: ``/%5fslicecache/stats`` is not the admin prefix anywhere,
    so it is not one here either (it is forwarded to the origin like any other path).
    Starlette would route on the decoded path that uvicorn puts in ``scope["path"]``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path")
        if scope["type"] == "http" and raw_path:
            scope = {**scope, "path": raw_path.decode("latin-1")}
        await self.app(scope, receive, send)


# What uvicorn cancels the tasks still running with once the shutdown grace is over.
SHUTDOWN_CANCEL = "timeout graceful shutdown exceeded"


def _cancelled_by_shutdown(cancel: asyncio.CancelledError, lifecycle: Lifecycle) -> bool:
    return lifecycle.draining or any(SHUTDOWN_CANCEL in str(arg) for arg in cancel.args)


async def _end_for_shutdown(ctx: RequestContext, send: Send, watch: WriteWatch) -> None:
    """A response still running when the shutdown grace ended (uvicorn cancels it): a 503
    if nothing of it was sent, else it is cut short, its access line saying so, instead of
    uvicorn's traceback and 500 for each one. Its resources were released on the way out
    (every owner's ``finally`` ran)."""
    if not watch.started():
        await send_text(send, 503, "Service Unavailable: shutting down", [("connection", "close")])
        return
    ctx.log.aborted = SHUTDOWN_CUT
    watch.end_early()


class SlicecacheApp(Starlette):
    """The Starlette app, with the proxy's own requests dispatched before its stack.

    Admin routes need Starlette's routing; a proxied request needs none of it (the
    catch-all route, exception middleware and router only cost it microseconds per
    request). A request whose raw path cannot reach an admin route goes straight to
    ``proxy``: the same access log, 500 handler and endpoint the stack would run, in the
    same order, and so does a target in another form: the asterisk form ``*``
    (app/edge/finalrecipient.py), or one the edge could not make the origin form, which
    ``proxy`` refuses (400, or 414 when too long). The admin prefix and a server that
    gives no ``raw_path`` take the whole stack, as before.
    """

    proxy: ASGIApp | None = None
    admin_prefix: bytes = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        proxy = self.proxy
        if proxy is not None and scope["type"] == "http":
            raw_path = scope.get("raw_path")
            if raw_path and not raw_path.startswith(self.admin_prefix):
                scope["app"] = self
                await proxy(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=8)
def origin_parts(base_url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of the origin's ``scheme://host:port`` (settings validated it)."""
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return scheme, host, parts.port or DEFAULT_PORTS[scheme]


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug's 500: short, dated (it bypasses the access-log middleware), never a traceback."""
    return PlainTextResponse(
        "Internal Server Error\n",
        status_code=500,
        headers={"date": http_date_now().decode(), "cache-control": "no-store"},
    )


async def open_l2(settings: Settings) -> RawDiskStore:
    """Open the raw-disk tier, or stop startup with one line saying why (no traceback)."""
    path = settings.raw_disk_cache.device_path
    started = time.perf_counter()
    try:
        store = await RawDiskStore.open(
            settings.raw_disk_cache, warning_interval=settings.warning_interval_seconds
        )
        stats = store.stats()
        took = time.perf_counter() - started
        entries, stored = int(stats.get("entries", 0)), int(stats.get("bytes", 0))
        log.info(
            f"L2 device {path} open: {entries} entries, {format_size(stored)} of "
            f"{format_size(int(stats.get('capacity_bytes', 0)))} in {took:.3f} s",
            extra={
                "fields": {
                    "event": "l2_open",
                    "path": path,
                    "entries": entries,
                    "bytes": stored,
                    "used_bytes": int(stats.get("used_bytes", 0)),
                    "capacity_bytes": int(stats.get("capacity_bytes", 0)),
                    "recovery_seconds": round(took, 3),
                }
            },
        )
        return store
    except RawDiskError as error:
        raise StartupError(f"cannot open the L2 device {path}: {error}") from None
    except OSError as error:  # missing directory, not a directory, permissions, disk full
        reason = error.strerror or type(error).__name__
        raise StartupError(
            f"cannot open the L2 device {path}: {reason} (errno {error.errno}); "
            "check SLICECACHE_RAW_DISK_CACHE__DEVICE_PATH and the volume mounted there"
        ) from None


_frozen = False
# Allocations between two collections of the youngest generation (CPython's default: 700).
# At 700 the objects of every response in flight outlived two young collections and
# reached the oldest generation, where their count started a full collection about every
# 0.5 s under cold misses (30-40 ms each on this VM, 7 % of the loop's time in the
# collector); at 10,000 most are freed before a young collection sees them: 4k cold misses
# with wrk -c32, 1,590 -> 1,710 req/s, p99 45 -> 37 ms, about one full collection a minute.
# The price: a young collection walks more, 5-25 ms at most here instead of 3.
YOUNG_GC_THRESHOLD = 10_000


def _freeze_startup_objects() -> None:
    """What the first startup built lives as long as the process: out of the cycle
    collector's way, so the idle pass of heaptrim (and every full collection under load)
    walks only what requests made: 59k objects took 36 ms to walk on this VM, then ~0.
    Once per process: a test process that builds many apps must not freeze the garbage
    of the ones before. The youngest generation is collected less often from here on
    (YOUNG_GC_THRESHOLD)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


def create_app(
    settings: Settings,
    *,
    transport_factory: TransportFactory | None = None,
    configure_logs: bool = True,
) -> Starlette:
    runtime = Runtime(
        settings=settings,
        slice_patterns=[re.compile(pattern) for pattern in settings.slice_patterns],
        access_log=AccessLogWriter(
            None, settings.access_log_buffer_bytes, settings.access_log_flush_seconds
        ),
    )
    make_transport = transport_factory or (
        lambda s: default_transport(
            s.upstream_pool_size,
            s.upstream_keepalive_seconds,
            RateLimitedLog(log, s.warning_interval_seconds),
            runtime.metrics.counters.error,  # slicecache_errors_total{kind="origin_..."}
        )
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level)
        watcher: asyncio.Task[None] | None = None
        trimmer: asyncio.Task[None] | None = None
        # L2 first: a device that cannot be opened stops startup before anything else is
        # open (an origin client left open would log its own complaint on the way out).
        l2 = await open_l2(settings) if settings.enable_cache and settings.enable_l2_cache else None
        timeouts = UpstreamTimeouts(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            total=settings.total_timeout or None,
        )
        warnings = RateLimitedLog(log, settings.warning_interval_seconds)
        transport = ObservedTransport(
            make_transport(settings), runtime.metrics, settings.upstream_base_url, warnings
        )
        runtime.upstream = UpstreamClient(
            settings.upstream_base_url, timeouts, transport, runtime.metrics.counters
        )
        if settings.enable_cache:
            runtime.store = TieredStore(
                MemoryStore(settings.l1_cache_size_bytes),
                l2,
                queue_size=settings.write_behind_queue_size,
                warning_interval=settings.warning_interval_seconds,
            )
            targeted = targeted_fields(settings.targeted_cache_control)
            engine = SliceEngine(
                upstream=runtime.upstream,
                store=runtime.store,
                slice_size=settings.slice_size,
                lookahead=settings.max_concurrent_subrequests,
                run_length=settings.slices_per_subrequest,
                max_retries=settings.max_retries,
                slice_wait_timeout=settings.slice_wait_timeout,
                budget=ByteBudget(settings.max_in_flight_bytes),
                counters=runtime.metrics.counters,
                warnings=warnings,
                targeted_fields=targeted,
            )
            policy = FreshnessPolicy(
                default_ttl=settings.cache_ttl,
                default_stale_if_error=int(settings.stale_if_error_seconds),
                targeted_fields=targeted,
            )
            runtime.directory = ObjectDirectory(engine, runtime.store, policy)
            store = runtime.store
            runtime.metrics.slice_hits = lambda: {
                "hit_l1": float(store.counters["slice_hits_l1"]),
                "hit_l2": float(store.counters["slice_hits_l2"]),
            }
            if l2 is not None:
                runtime.metrics.add_source("slicecache_l2", "L2 raw-disk store", l2.stats)
            watch = PressureWatch(runtime.store, warnings)
            watcher = asyncio.get_running_loop().create_task(
                watch.run(settings.warning_interval_seconds or 10.0)
            )
            l1 = store.l1
            trim = HeapTrim(engine, held=lambda: int(l1.stats()["bytes"]) if l1 else 0)
            trimmer = asyncio.get_running_loop().create_task(
                trim.run(HEAP_TRIM_INTERVAL_SECONDS), name="heap-trim"
            )
        _freeze_startup_objects()
        runtime.lifecycle.ready = True
        try:
            yield
        finally:
            runtime.lifecycle.ready = False
            for task in (watcher, trimmer):
                if task is not None:
                    task.cancel()
            if runtime.directory is not None:
                await runtime.directory.close()
                await runtime.directory.engine.close()
            if runtime.store is not None:
                await runtime.store.close()
            await runtime.upstream.aclose()
            if runtime.fast_hit is not None:
                runtime.fast_hit.cut_unsettled()  # fast answers still in transports
            runtime.access_log.flush()

    runtime.metrics.add_source("slicecache", "slicecache engine and tiers", runtime.figures)
    guard = admin.AdminGuard(settings.admin_port, settings.admin_allow_networks)
    endpoint = ProxyEndpoint(runtime, guard)
    routes = [
        *admin.routes(
            settings.admin_prefix,
            runtime.lifecycle,
            guard,
            metrics=runtime.metrics.render,
            stats=runtime.stats,
        ),
        Route("/{path:path}", endpoint, methods=None),
    ]
    app = SlicecacheApp(routes=routes, lifespan=lifespan, exception_handlers={500: internal_error})
    app.state.runtime = runtime
    trusted = TrustedProxies(settings.trusted_proxies)
    app.add_middleware(RawPathRouting)
    app.add_middleware(
        AccessLogMiddleware,
        metrics=runtime.metrics,
        trusted_proxies=trusted,
        sample_rate=settings.access_log_sample_rate,
        writer=runtime.access_log,
    )
    app.add_middleware(StartupFailureReporter)
    # What the stack above runs for a proxied request, without the routing machinery:
    # Starlette's 500 handler outside the access log (as ServerErrorMiddleware is there).
    app.proxy = ServerErrorMiddleware(
        AccessLogMiddleware(
            endpoint,
            metrics=runtime.metrics,
            trusted_proxies=trusted,
            sample_rate=settings.access_log_sample_rate,
            writer=runtime.access_log,
        ),
        handler=internal_error,
    )
    app.admin_prefix = settings.admin_prefix.encode("latin-1")
    runtime.edge_refusals = EdgeRefusalLog(
        runtime.metrics.edge_refusals,
        runtime.metrics.send_timeouts,
        runtime.metrics.edge_ignored,
        settings.warning_interval_seconds,
    )
    if settings.fast_path:
        runtime.fast_hit = FastHits(runtime, settings.access_log_sample_rate, runtime.access_log)
    return app


_default_app: Starlette | None = None


def __getattr__(name: str) -> Starlette:
    """``app.main.app``: the app configured from the environment, built once on first use."""
    global _default_app
    if name != "app":
        raise AttributeError(name)
    if _default_app is None:
        _default_app = create_app(load_settings())
    adopt_uvicorn(_default_app, _default_app.state.runtime.settings)
    return _default_app
