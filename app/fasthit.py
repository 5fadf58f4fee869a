"""The fast path: a plain fresh hit answered from the connection's protocol (issue 16).

A GET or HEAD of a small object held whole in L1, fresh, asked without Range,
conditionals, request directives or anything else that changes the answer, is what most
cache traffic is, and the ASGI request cycle (task, scope, send chain, middleware) costs it
several times the work of the answer. :class:`FastHits` answers such a request
synchronously, as the whole response in bytes, or returns None and the request goes the
normal way. ``app/edge/httpserver.py`` calls it when a bodiless request head completes
and nothing else is running on the connection.

It declines whatever it cannot answer exactly as the normal path would; the answers are
the same bytes (tests/test_fasthit.py compares them), the same access line and the same
metrics. What it reads is the normal path's own state, never a copy: the object
directory's metadata (a PURGE drops it there), the prepared freshness and header block of
``ObjectMeta``, the L1 slice, the same CacheStatus and X-Cache rules.
"""

from __future__ import annotations

import random
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import httptools

from app.edge import ranges
from app.edge.clientaddr import TrustedProxies
from app.edge.headers import parse_host
from app.engine.objectmeta import ObjectMeta, ReplayBlock
from app.httpcache.cache_status import CacheStatus, append_cache_status
from app.httpcache.freshness import fresh_ttl
from app.ops.accesslog import access_line, http_date_now, request_id_of
from cache import keys

if TYPE_CHECKING:
    from app.main import Runtime

# Request fields that do not change a hit's answer when the stored response has no Vary
# (the normal path reads none of them on a hit; X-Request-Id only names the request).
# Any other field (Range, If-*, Cache-Control, Pragma, Authorization, Cookie, a body's
# framing, Expect, X-Forwarded-For...) sends the request the normal way.
HARMLESS = frozenset(
    {
        b"host",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"connection",
        b"referer",
        b"x-request-id",
    }
)
# Stored fields that uvicorn would act on when writing the head: never in a replayed
# block (hop-by-hop and framing fields are not stored), declined if they ever are.
FRAMING = frozenset({b"connection", b"transfer-encoding", b"content-length", b"content-range"})
# uvicorn refuses to write these bytes in a field value (HEADER_VALUE_RE): the normal
# path would fail such a response, so the fast path does not write it either.
BAD_VALUE_BYTES = frozenset(range(0x00, 0x09)) | frozenset(range(0x0A, 0x20)) | {0x7F}
PREFIXES_KEPT = 4096  # prepared head prefixes, one per stored response in use
ROUTES_KEPT = 4096  # (Host, URL) pairs whose object key is remembered


class FastHits:
    """``fast_hit(...) -> bytes | None``: the whole response to a plain fresh hit, or None."""

    def __init__(
        self,
        runtime: Runtime,
        trusted_proxies: TrustedProxies,
        sample_rate: float,
        stream: TextIO | None = None,
    ) -> None:
        self.runtime = runtime
        self.trusted_proxies = trusted_proxies
        self.sample_rate = sample_rate
        self.stream = stream
        settings = runtime.settings
        self.admin_prefix = settings.admin_prefix.encode("latin-1")
        # An admin port makes the proxy route depend on the local port: left to the app.
        self.enabled = settings.fast_path and not settings.admin_port
        # entry key -> (the block it was made from, its encoded fields, has Date)
        self._prefixes: dict[str, tuple[ReplayBlock, bytes, bool]] = {}
        # entry key -> (block, age, ttl, the fields from Age to X-Cache-Slices)
        self._middles: dict[str, tuple[ReplayBlock, int, int, bytes]] = {}
        # (Host, URL) -> (object key, raw path, query): see _route
        self._routes: dict[tuple[bytes, bytes], tuple[str, bytes, bytes]] = {}

    def __call__(
        self,
        method: str,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        keep_alive: bool,
        default_headers: list[tuple[bytes, bytes]],
    ) -> bytes | None:
        started = time.perf_counter()
        runtime = self.runtime
        directory = runtime.directory
        if (
            not self.enabled
            or directory is None
            or runtime.upstream is None
            or (method != "GET" and method != "HEAD")
            or url[:1] != b"/"
            or url.startswith(self.admin_prefix)
            or b"#" in url
            or not url.isascii()
        ):
            return None
        host: bytes | None = None
        range_field: bytes | None = None
        field_bytes = 0
        for name, value in headers:
            if name not in HARMLESS:
                if name != b"range" or range_field is not None:
                    return None
                range_field = value
            elif name == b"host":
                if host is not None:
                    return None  # two Host fields: the normal path's 400
                host = value
            field_bytes += len(name) + len(value) + 4
        if host is None or field_bytes > runtime.settings.max_header_bytes:
            return None
        route = self._routes.get((host, url))
        if route is None:
            route = self._route(host, url)
            if route is None:
                return None
        object_key, raw_path, query = route
        records = directory.records
        if records.is_unsliceable(object_key):
            return None
        meta = records.known_meta(object_key)
        if meta is None or meta.vary or meta.status != 200:
            return None
        engine = directory.engine
        size = meta.size
        if size <= 0 or size > engine.slice_size:
            return None  # one whole slice only
        now = time.time()
        prepared = meta.freshness(directory.policy)
        ttl = fresh_ttl(prepared, now)
        if ttl is None:
            return None  # stale, or no-cache: decide_prepared would not answer FRESH
        slice_key = keys.slice_key(object_key, meta.version, 0)
        store = runtime.store
        l1 = None if store is None else store.l1
        if (
            l1 is None
            or store is None
            or slice_key in engine.fills
            or slice_key in engine.recent
            or not l1.contains_slice(slice_key)
        ):
            return None
        span: ranges.ByteRange | None = None
        if range_field is not None:
            decision = ranges.parse_range_header(range_field.decode("latin-1"), size)
            if decision.outcome is ranges.RangeOutcome.PARTIAL:
                if len(decision.ranges) != 1:
                    return None  # multipart: the normal path
                span = decision.ranges[0]
            elif decision.outcome is not ranges.RangeOutcome.FULL:
                return None  # 416: the normal path
        prefix = self._prefix(object_key, meta)
        if prefix is None:
            return None
        fields, dated = prefix
        body: Any = b""
        if method == "GET":  # a HEAD reads no slice on the normal path either
            body = l1.get_slice_now(slice_key)
            if body is None:
                return None
            store.counters["slice_hits_l1"] += 1  # as TieredStore.get_slice counts it
            if len(body) != size:
                return None  # the normal path refetches it
            if span is not None:
                body = memoryview(body)[span.first : span.last + 1]
        runtime.lifecycle.request_started()
        try:
            return self._answer(
                method,
                raw_path,
                query,
                headers,
                client,
                keep_alive,
                default_headers,
                object_key,
                meta,
                fields,
                dated,
                ttl,
                prepared.lifetime.source == "default",
                span,
                body,
                now,
                started,
            )
        finally:
            runtime.lifecycle.request_finished()

    def _route(self, host: bytes, url: bytes) -> tuple[str, bytes, bytes] | None:
        """(object key, raw path, query) of a proxied target, as the normal path makes
        them; None where the normal path would refuse or not slice it. Remembered: a
        pure function of the two while the settings stand."""
        runtime = self.runtime
        settings = runtime.settings
        host_text = host.decode("latin-1")
        if parse_host(host_text) is None:
            return None
        parsed = httptools.parse_url(url)  # as uvicorn splits it
        raw_path: bytes = parsed.path
        query: bytes = parsed.query or b""
        if len(raw_path) + len(query) > settings.max_request_target_bytes:
            return None
        path = raw_path.decode("latin-1")
        target = path + "?" + query.decode("latin-1") if query else path
        if runtime.slice_patterns and not any(p.search(path) for p in runtime.slice_patterns):
            return None
        route = (runtime.key_for(host_text, path, target), raw_path, query)
        if len(self._routes) >= ROUTES_KEPT:
            self._routes.clear()
        self._routes[(host, url)] = route
        return route

    def _prefix(self, entry_key: str, meta: ObjectMeta) -> tuple[bytes, bool] | None:
        """The replayed fields of ``meta`` as uvicorn writes them, encoded once."""
        block = meta.replay()
        kept = self._prefixes.get(entry_key)
        if kept is not None and kept[0] is block:
            return kept[1], kept[2]
        lines = []
        dated = False
        for name, value in block.fields:
            raw_name = name.encode("latin-1").lower()
            raw_value = value.encode("latin-1")
            if raw_name in FRAMING or not BAD_VALUE_BYTES.isdisjoint(raw_value):
                return None
            dated = dated or raw_name == b"date"
            lines.append(raw_name + b": " + raw_value + b"\r\n")
        if len(self._prefixes) >= PREFIXES_KEPT:
            self._prefixes.clear()
        encoded = b"".join(lines)
        self._prefixes[entry_key] = (block, encoded, dated)
        return encoded, dated

    def _answer(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        keep_alive: bool,
        default_headers: list[tuple[bytes, bytes]],
        entry_key: str,
        meta: ObjectMeta,
        fields: bytes,
        dated: bool,
        ttl: int,
        by_operator: bool,
        span: ranges.ByteRange | None,
        body: Any,
        now: float,
        started: float,
    ) -> bytes:
        # What sliced._answer sends for a fresh one-slice hit, then what the access-log
        # middleware adds (X-Request-Id, a Date if none), as uvicorn writes the head.
        block = meta.replay()
        age = block.age.at(now)
        kept = self._middles.get(entry_key)
        if kept is not None and kept[0] is block and kept[1] == age and kept[2] == ttl:
            middle = kept[3]
        else:
            middle = self._middle(meta, block, age, ttl, by_operator)
            if len(self._middles) >= PREFIXES_KEPT:
                self._middles.clear()
            self._middles[entry_key] = (block, age, ttl, middle)
        request_id = request_id_of({"headers": headers})
        size = meta.size
        if span is None:
            status, length = 200, size
            parts = [b"HTTP/1.1 200 OK\r\n"]
        else:
            status, length = 206, span.length
            parts = [b"HTTP/1.1 206 Partial Content\r\n"]
        for name, value in default_headers:
            parts.append(name.lower() + b": " + value + b"\r\n")
        parts.append(fields)
        parts.append(middle)
        if span is not None:
            parts.append(b"content-range: bytes %d-%d/%d\r\n" % (span.first, span.last, size))
        parts.append(
            b"content-length: %d\r\nx-cache: HIT\r\nx-cache-slices: hit=1, miss=0\r\n" % length
        )
        parts.append(b"x-request-id: " + request_id.encode("latin-1") + b"\r\n")
        if not dated:
            parts.append(b"date: " + http_date_now() + b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        head = method == "HEAD"
        if not head:
            parts.append(body)
        response = b"".join(parts)

        sent = 0 if head else length
        duration = time.perf_counter() - started
        self.runtime.metrics.observe_fast_hit(method, sent, duration)
        rate = self.sample_rate
        if rate >= 1.0 or random.random() < rate:
            line = access_line(
                round(time.time(), 3),
                method,
                raw_path.decode("latin-1"),
                query.decode("latin-1"),
                status,
                sent,
                round(duration * 1000, 3),
                0.0,
                "HIT",
                request_id,
                self.trusted_proxies.client({"client": client, "headers": headers}) or "-",
                None if head else (1, 0, 0),
                None,
            )
            (self.stream or sys.stdout).write(line)
        return response

    @staticmethod
    def _middle(
        meta: ObjectMeta, block: ReplayBlock, age: int, ttl: int, by_operator: bool
    ) -> bytes:
        """Age to Cache-Status: what changes once a second (Age, the TTL)."""
        status = CacheStatus.fresh_hit(ttl, "default-ttl" if by_operator else None)
        cache_status = append_cache_status(block.upstream_cache_status, status.header_value())
        return b"age: %d\r\naccept-ranges: bytes\r\ncache-status: %s\r\n" % (
            age,
            cache_status.encode("latin-1"),
        )
