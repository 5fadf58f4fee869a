"""The fast path: a plain fresh hit answered from the connection's protocol (issue 16).

A GET or HEAD of a small object held whole in L1, fresh, asked without conditionals,
request directives or anything else that changes the answer (a single satisfiable Range
is answered too, and a short range of a large object's slice that only L2 holds, when
that slice's record is in memory: :data:`L2_COPY_MAX`), is what most cache traffic is,
and the ASGI request cycle (task, scope, send chain, middleware) costs it several times
the work of the answer. :class:`FastHits` answers such a request synchronously, as the
whole response in bytes, or returns None and the request goes the normal way.
``app/edge/httpserver.py`` calls it when a bodiless request head completes and nothing
else is running on the connection.

It declines whatever it cannot answer exactly as the normal path would; the answers are
the same bytes (tests/test_fasthit.py compares them), the same access line and the same
metrics. What it reads is the normal path's own state, never a copy: the object
directory's metadata (a PURGE drops it there), the prepared freshness and header block of
``ObjectMeta``, the L1 slice (or the L2 lease, taken as the normal path takes it), the
same CacheStatus and X-Cache rules.

What a hit costs is kept to lookups and comparisons: per (Host, target) the object key
and the access line's fixed part (:class:`_Route`); per stored response a :class:`_Plan`
holding its encoded header block, its slice key and, for as long as its Age and the
server's default fields stay what they are (at most a second), the whole response head
up to X-Cache-Slices. The plan is checked against the directory's current metadata on
every hit (identity of the metadata and of its header list, the freshness policy), so a
PURGE, a revalidation or a replaced response is seen at once.

An answer is counted and logged (:meth:`FastHits.settle`) once the protocol has written
it and the transport holds none of it, or as a client's cut if the connection is lost
while it still held some: the normal path's rule (app/ops/accesslog.py).

Length (~660 lines): the declines, the plan and the answer must be read together to see
that the fast path answers exactly what the normal path would.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from typing import TYPE_CHECKING, Any, NamedTuple

import httptools

from app.edge import ranges
from app.edge.headers import parse_host
from app.engine.objectmeta import ObjectMeta, ReplayBlock
from app.engine.slices import slice_bounds
from app.httpcache.cache_status import CacheStatus, append_cache_status
from app.httpcache.freshness import FreshnessPolicy, PreparedFreshness, fresh_ttl
from app.ops.accesslog import (
    CLIENT_CUT,
    AccessLineParts,
    AccessLogWriter,
    access_line_head,
    access_line_parts,
    ended_by,
    http_date_now,
    line_of,
    ms_text,
    new_request_id,
    request_id_from,
)
from cache import keys
from cache.indexed import CHANGES
from cache.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from app.main import Runtime

log = logging.getLogger("slicecache.fasthit")

# Request fields that do not change a hit's answer when the stored response has no Vary
# (the normal path reads none of them on a hit; X-Request-Id only names the request).
# Any other field (If-*, Cache-Control, Pragma, Authorization, Cookie, a body's framing,
# Expect, X-Forwarded-For...) sends the request the normal way; Range is read below.
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
PLANS_KEPT = 4096  # prepared stored responses in use
# A plan keeps the slice of a one-slice object it last answered, to answer a repeat
# without looking again; those bytes are outside L1's budget (L1 may evict them, a PURGE
# remove them, and the plan keeps them until a hit finds it stale): bounded here. A repeat
# of a longer body looks it up again, which costs little beside sending it. helper-63:
# 1 MiB objects behind a 2 MB L1 held 1.28 GB in 4096 plans.
PLAN_BODY_MAX = 64 * 1024
PLAN_BODIES_MAX = 16 * 1024 * 1024
ROUTES_KEPT = 4096  # (Host, URL) pairs whose object key is remembered
LOG_PARTS_KEPT = 16  # per route: answers (method, status, length, client) of prepared lines
STATUS_200 = b"HTTP/1.1 200 OK\r\n"
STATUS_206 = b"HTTP/1.1 206 Partial Content\r\n"
# Bodies up to this long are copied behind the head into one write; longer ones go out
# as views of the stored bytes (a copy of 1 MB cost more than the rest of the answer).
JOIN_BELOW = 16 * 1024
# A range inside one slice that only L2 holds is answered here up to this long, when the
# slice's record is in memory (verified on the loop, as the normal path's lease does):
# copied out, the lease released before the answer is written. A small seek costs the
# normal path ~300 µs of CPU (ASGI cycle and the engine's stream) for a ~10 µs copy; a
# longer one streams the normal way, zero-copy from the mapping.
L2_COPY_MAX = 64 * 1024


class _Route:
    """What a (Host, target) pair always means while the settings stand."""

    __slots__ = ("object_key", "raw_path", "query", "log_heads", "log_parts")

    def __init__(self, object_key: str, raw_path: bytes, query: bytes) -> None:
        self.object_key = object_key
        self.raw_path = raw_path
        self.query = query
        path, query_text = raw_path.decode("latin-1"), query.decode("latin-1")
        # The access line's fixed part, by method.
        self.log_heads = {m: access_line_head(m, path, query_text) for m in ("GET", "HEAD")}
        # ... and the rest of it but the clock and the request ID, by what else varies.
        self.log_parts: dict[tuple[str, int, int, int, str], AccessLineParts] = {}


class _Answer(NamedTuple):
    """What :meth:`FastHits._respond` makes a response of."""

    status: int
    head: list[bytes]  # the status line to X-Cache-Slices, in pieces
    body: list[Any]  # the bytes of each slice answered (none for a HEAD)
    slices: int  # how many (X-Cache-Slices)
    length: int  # Content-Length
    dated: bool  # the stored fields have a Date


# One answer as it is counted and logged once its bytes are out (FastHits.settle): the
# answer, method, route, request ID, client, when its head completed, and its TTFB.
Answered = tuple[_Answer, str, "_Route", str, "tuple[str, int] | None", float, float]


class _Plan:
    """One stored response as the fast path answers it (see the module's docstring)."""

    __slots__ = (
        "meta",
        "headers",
        "policy",
        "block",
        "slice_key",
        "slice_prefix",
        "fields",
        "dated",
        "by_operator",
        # The clock-dependent part, valid while since <= now < until and the server's
        # default fields are ``defaults``:
        "since",
        "until",
        "defaults",
        "common",  # default fields, stored fields, Age to Cache-Status
        "head_200",  # the status line, common, Content-Length to X-Cache-Slices
        # The slice of a one-slice object as last read from L1, its expiry there, and
        # cache.indexed.CHANGES.count when it was: see FastHits.__call__.
        "body",
        "body_expires",
        "seen",
    )

    def __init__(
        self,
        meta: ObjectMeta,
        policy: FreshnessPolicy,
        block: ReplayBlock,
        slice_prefix: str,
        fields: bytes,
        dated: bool,
        by_operator: bool,
    ) -> None:
        self.meta = meta
        self.headers = meta.headers
        self.policy = policy
        self.block = block
        self.slice_prefix = slice_prefix  # + the index: a slice's key (cache.keys)
        self.slice_key = slice_prefix + "0"
        self.fields = fields
        self.dated = dated
        self.by_operator = by_operator
        self.since = self.until = 0.0
        self.defaults: list[tuple[bytes, bytes]] | None = None
        self.common = self.head_200 = b""
        self.body: Any = b""
        self.body_expires = 0.0
        self.seen = -1

    def current(self, meta: ObjectMeta | None, policy: FreshnessPolicy) -> bool:
        """Still the directory's stored response, as it was prepared?"""
        return meta is self.meta and meta.headers is self.headers and policy is self.policy

    def head_stands(self, now: float, defaults: list[tuple[bytes, bytes]]) -> bool:
        """The head made by :meth:`tick` is the one to send at ``now``."""
        return self.since <= now < self.until and defaults is self.defaults

    def tick(
        self, prepared: PreparedFreshness, now: float, defaults: list[tuple[bytes, bytes]]
    ) -> bool:
        """Make the head for ``now``; False when the response is no longer fresh."""
        ttl = fresh_ttl(prepared, now)
        if ttl is None:
            return False  # stale, or no-cache: decide_prepared would not answer FRESH
        age = self.block.age
        self.since, self.until = now, age.steady_until(now)
        self.defaults = defaults
        status = CacheStatus.fresh_hit(ttl, "default-ttl" if self.by_operator else None)
        cache_status = append_cache_status(
            self.block.upstream_cache_status, status.header_value()
        ).encode("latin-1")
        self.common = b"".join(
            [
                *(name.lower() + b": " + value + b"\r\n" for name, value in defaults),
                self.fields,
                b"age: %d\r\naccept-ranges: bytes\r\ncache-status: %s\r\n"
                % (age.at(now), cache_status),
            ]
        )
        self.head_200 = STATUS_200 + self.common + _tail(self.meta.size)
        return True


def _tail(length: int, slices: int = 1) -> bytes:
    return b"content-length: %d\r\nx-cache: HIT\r\nx-cache-slices: hit=%d, miss=0\r\n" % (
        length,
        slices,
    )


def _encoded_fields(block: ReplayBlock) -> tuple[bytes, bool] | None:
    """The replayed fields as uvicorn writes them, and whether Date is one of them."""
    lines = []
    dated = False
    for name, value in block.fields:
        raw_name = name.encode("latin-1").lower()
        raw_value = value.encode("latin-1")
        if raw_name in FRAMING or not BAD_VALUE_BYTES.isdisjoint(raw_value):
            return None
        dated = dated or raw_name == b"date"
        lines.append(raw_name + b": " + raw_value + b"\r\n")
    return b"".join(lines), dated


class FastHits:
    """``fast_hit(...)``: the whole response to a plain fresh hit (bytes, or the head and
    views of the stored slices, to be written in order), or None."""

    def __init__(
        self,
        runtime: Runtime,
        sample_rate: float,
        writer: AccessLogWriter | None = None,
    ) -> None:
        self.runtime = runtime
        self.sample_rate = sample_rate
        self.writer = writer or AccessLogWriter()
        settings = runtime.settings
        self.admin_prefix = settings.admin_prefix.encode("latin-1")
        # An admin port makes the proxy route depend on the local port: left to the app.
        self.enabled = settings.fast_path and not settings.admin_port
        self._plans: dict[str, _Plan] = {}  # object key -> its stored response's plan
        self.plan_body_bytes = 0  # what the plans' bodies hold (PLAN_BODIES_MAX)
        self._routes: dict[tuple[bytes, bytes], _Route] = {}
        self._ts_ms = 0
        self._ts_text = ""
        # The last answer made, taken by the protocol that writes it (see settle).
        self.answered: Answered | None = None
        # Protocols whose transport still holds part of a fast answer (not yet settled).
        self.unsettled: set[Any] = set()
        # A bug here would otherwise log a traceback for every request it hits.
        self._failures = RateLimitedLog(log, settings.warning_interval_seconds)

    def failed(self, error: Exception) -> None:
        """A call raised ``error`` (the protocol then serves the request the normal way):
        counted, and logged at most once per WARNING_INTERVAL_SECONDS with where it was
        raised."""
        self.runtime.metrics.fast_path_failures.inc()
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        self._failures.warning(
            "fast_path_failed",
            "fast path failed; the request was served the normal way",
            error=f"{type(error).__name__}: {error}",
            at=where,
        )

    def __call__(
        self,
        method: str,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        keep_alive: bool,
        default_headers: list[tuple[bytes, bytes]],
        pending: int = 0,
    ) -> bytes | list[Any] | None:
        """``pending``: bytes of earlier answers still in the connection's transport
        buffer; with any, only a short answer (JOIN_BELOW) is made here, so that a client
        that does not read cannot pile up slices by pipelining."""
        started = time.perf_counter()
        runtime = self.runtime
        directory = runtime.directory
        if (
            not self.enabled
            or directory is None
            or runtime.upstream is None
            or (method != "GET" and method != "HEAD")
        ):
            return None
        # The edge (app/edge/httpserver.py) has already refused heads over the byte and
        # field limits: what is left to look at is which fields there are.
        host: bytes | None = None
        range_field: bytes | None = None
        asked_id = False  # an X-Request-Id, echoed if usable
        for name, value in headers:
            if name not in HARMLESS:
                if name != b"range" or range_field is not None:
                    return None
                range_field = value
            elif name == b"host":
                if host is not None:
                    return None  # two Host fields: the normal path's 400
                host = value
            elif name == b"x-request-id":
                asked_id = True
        if host is None:
            return None
        route = self._routes.get((host, url))
        if route is None:
            route = self._route(host, url)
            if route is None:
                return None
        store = runtime.store
        l1 = None if store is None else store.l1
        if l1 is None or store is None:
            return None
        now = time.time()
        head = method == "HEAD"
        plan = self._plans.get(route.object_key)
        if (
            plan is not None
            and plan.seen == CHANGES.count
            and range_field is None
            and plan.head_stands(now, default_headers)
            and now < plan.body_expires
            and plan.current(plan.meta, directory.policy)
            and plan.slice_key not in directory.engine.fills
            and (head or not pending or plan.meta.size <= JOIN_BELOW)
        ):
            # The plain hit of a moment ago again: nothing it was looked up in (metadata,
            # L1, recent slices, unsliceable marks) has changed since, so the same answer
            # stands. Recency in those LRUs moves on the first hit of each Age window (at
            # most a second), as Varnish's lru_interval.
            answer = _Answer(
                200, [plan.head_200], [] if head else [plan.body], 1, plan.meta.size, plan.dated
            )
            if not head:
                l1.count_hits(1)
                store.counters["slice_hits_l1"] += 1  # as TieredStore.get_slice counts it
        else:
            looked_up = self._look_up(
                route.object_key, range_field, head, now, default_headers, pending
            )
            if looked_up is None:
                return None
            answer = looked_up
        request_id = request_id_from(headers) if asked_id else new_request_id()
        return self._respond(answer, method, route, request_id, client, keep_alive, started)

    def _look_up(
        self,
        object_key: str,
        range_field: bytes | None,
        head: bool,
        now: float,
        default_headers: list[tuple[bytes, bytes]],
        pending: int,
    ) -> _Answer | None:
        """The answer from the directory's metadata and L1's slices (or one L2 slice), or
        None."""
        runtime = self.runtime
        directory = runtime.directory
        store = runtime.store
        assert directory is not None and store is not None and store.l1 is not None
        l1 = store.l1
        records = directory.records
        meta = records.known_meta(object_key)
        if meta is None or records.is_unsliceable(object_key):
            return None
        policy = directory.policy
        plan = self._plans.get(object_key)
        if plan is None or not plan.current(meta, policy):
            plan = self._plan(object_key, meta, policy)
            if plan is None:
                return None
        if not plan.head_stands(now, default_headers):
            if not plan.tick(meta.freshness(policy), now, default_headers):
                return None
        engine = directory.engine
        size = meta.size
        span: ranges.ByteRange | None = None
        if range_field is not None:
            decision = ranges.parse_range_header(range_field.decode("latin-1"), size)
            if decision.outcome is ranges.RangeOutcome.PARTIAL:
                if len(decision.ranges) != 1:
                    return None  # multipart: the normal path
                span = decision.ranges[0]
            elif decision.outcome is not ranges.RangeOutcome.FULL:
                return None  # 416: the normal path
        if span is None:
            first, last = 0, size - 1
        else:
            first, last = span.first, span.last
        length = last - first + 1
        if pending and not head and length > JOIN_BELOW:
            return None  # see __call__
        slice_size = engine.slice_size
        if size <= slice_size:
            slice_keys = [plan.slice_key]
        elif length > slice_size:
            # A longer answer streams the normal way, as the client reads it: written at
            # once, what the socket does not take waits in the transport's buffer, views
            # that keep their slices alive outside any budget (one slice, as the normal
            # path holds while it sends, is the most a connection gets here).
            return None
        else:
            prefix = plan.slice_prefix
            slice_keys = [
                prefix + str(i) for i in range(first // slice_size, last // slice_size + 1)
            ]
        fills, recent = engine.fills, engine.recent
        for slice_key in slice_keys:
            if slice_key in fills or slice_key in recent:
                return None  # being fetched, or held for its readers only: the engine's
        body: list[Any] = []
        if head:  # a HEAD reads no slice on the normal path either
            contains = l1.contains_slice
            if not all(contains(slice_key) for slice_key in slice_keys):
                return None
        else:
            held = l1.held_slices_now(slice_keys)
            if held is None:
                if len(slice_keys) != 1 or length > L2_COPY_MAX:
                    return None
                copied = self._from_l2(slice_keys[0], first, last, size, slice_size)
                if copied is None:
                    return None
                body.append(copied)
            else:
                datas, expires = held
                store.counters["slice_hits_l1"] += len(datas)  # as TieredStore counts
                index = first // slice_size
                for data in datas:
                    lo, hi = slice_bounds(index, slice_size, size)
                    if len(data) != hi - lo + 1:
                        return None  # the normal path refetches it
                    if first > lo or last < hi:
                        data = memoryview(data)[max(first, lo) - lo : min(last, hi) - lo + 1]
                    body.append(data)
                    index += 1
                if len(datas) == 1 and span is None:
                    self._keep_body(plan, datas[0], expires)
        # What sliced._answer sends for a fresh hit of held slices.
        count = len(slice_keys)
        if span is None and count == 1:
            return _Answer(200, [plan.head_200], body, count, length, plan.dated)
        if span is None:
            return _Answer(
                200,
                [STATUS_200, plan.common, _tail(length, count)],
                body,
                count,
                length,
                plan.dated,
            )
        head_parts = [
            STATUS_206,
            plan.common,
            b"content-range: bytes %d-%d/%d\r\n" % (first, last, size),
            _tail(length, count),
        ]
        return _Answer(206, head_parts, body, count, length, plan.dated)

    def _from_l2(
        self, slice_key: str, first: int, last: int, size: int, slice_size: int
    ) -> bytes | None:
        """Bytes ``first``..``last`` of a slice only L2 holds, copied out of its lease when
        it is in memory and verified (TieredStore.lease_slice_now); the lease is released
        before the answer is written, so no extent stays pinned by a transport buffer."""
        store = self.runtime.store
        assert store is not None
        lease = store.lease_slice_now(slice_key, size)
        if lease is None:
            return None
        with lease:
            lo, hi = slice_bounds(first // slice_size, slice_size, size)
            if len(lease.view) != hi - lo + 1:
                return None  # the normal path refetches it
            return bytes(lease.view[first - lo : last - lo + 1])

    def _respond(
        self,
        answer: _Answer,
        method: str,
        route: _Route,
        request_id: str,
        client: tuple[str, int] | None,
        keep_alive: bool,
        started: float,
    ) -> bytes | list[Any]:
        """The response's bytes, with what the access-log middleware adds (X-Request-Id,
        a Date if none) as uvicorn writes the head. What to count and log for it is left in
        ``answered`` for :meth:`settle`."""
        parts = answer.head
        parts.append(
            b"x-request-id: %s\r\n%s%s\r\n"
            % (
                request_id.encode("latin-1"),
                b"" if answer.dated else b"date: " + http_date_now() + b"\r\n",
                b"" if keep_alive else b"connection: close\r\n",
            )
        )
        body = answer.body
        response: bytes | list[Any]
        if answer.length <= JOIN_BELOW or not body:
            response = b"".join(parts + body)  # one write of a small answer
        else:
            response = [b"".join(parts), *body]  # written as they are: no copy
        now = time.perf_counter()
        self.answered = (answer, method, route, request_id, client, started, now - started)
        return response

    def cut_unsettled(self) -> None:
        """At the end of a shutdown: the fast answers transports still hold are cut short
        by the server (their connections go with the process)."""
        for protocol in list(self.unsettled):
            protocol.cut_at_shutdown()

    def settle(
        self,
        answered: Answered,
        unsent: int = 0,
        later: bool = False,
        cut: str = CLIENT_CUT,
    ) -> None:
        """Count and log an answer, as the normal path counts and logs it, once its bytes
        have left user space (``unsent`` 0), or once its connection was lost with
        ``unsent`` bytes of it still in the transport: a client's cut, those bytes not
        counted as sent (as app/ops/accesslog.py does for the normal path). ``later``:
        not as it was written, but when the transport let go of it (its duration ends
        now, as nginx's $request_time ends with the last write). ``cut``: why it was cut
        short, the access line's ``aborted``, whose cause labels the metric (as on the
        normal path: :func:`app.ops.accesslog.ended_by`)."""
        answer, method, route, request_id, client, started, ttfb = answered
        head = method == "HEAD"
        sent = 0 if head else max(0, answer.length - unsent)
        metrics = self.runtime.metrics
        # X-Cache-Slices counts a HEAD's slices too.
        metrics.observe_fast_hit(method, sent, ttfb, answer.slices)
        whole = not unsent
        if not whole:
            metrics.incomplete.labels(ended_by(cut)).inc()
        rate = self.sample_rate
        if rate >= 1.0 or not whole or random.random() < rate:
            # The client is the TCP peer: a request with X-Forwarded-For is declined above.
            peer = client[0] if client else "-"
            # A whole answer's line is kept per route; a cut one (rare) is made each time.
            key = (method, answer.status, sent, answer.slices, peer)
            line = route.log_parts.get(key) if whole else None
            if line is None:
                aborted = None if whole else cut
                slices = None if head else (answer.slices, 0, 0)
                line = access_line_parts(
                    route.log_heads[method], answer.status, sent, 0.0, "HIT", peer, slices, aborted
                )
                if whole:
                    if len(route.log_parts) >= LOG_PARTS_KEPT:
                        route.log_parts.clear()
                    route.log_parts[key] = line
            # The clock to the millisecond, its text made once per millisecond.
            ms = (time.time_ns() + 500_000) // 1_000_000
            if ms != self._ts_ms:
                self._ts_ms, self._ts_text = ms, ms_text(ms)
            duration = time.perf_counter() - started if later else ttfb
            self.writer.write(line_of(line, self._ts_text, "%.3f" % (duration * 1000), request_id))

    def _route(self, host: bytes, url: bytes) -> _Route | None:
        """The object key, raw path and query of a proxied target, as the normal path
        makes them; None where the normal path would refuse or not slice it. Remembered:
        a pure function of the two while the settings stand."""
        if url[:1] != b"/" or url.startswith(self.admin_prefix) or b"#" in url or not url.isascii():
            return None
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
        route = _Route(runtime.key_for(host_text, path, target), raw_path, query)
        if len(self._routes) >= ROUTES_KEPT:
            self._routes.clear()
        self._routes[(host, url)] = route
        return route

    def _plan(self, object_key: str, meta: ObjectMeta, policy: FreshnessPolicy) -> _Plan | None:
        """Prepare ``meta`` for the fast path, or None when it never answers it."""
        directory = self.runtime.directory
        assert directory is not None
        if meta.vary or meta.status != 200 or meta.size <= 0:
            return None  # a stored 200 without Vary only
        if meta.whole and meta.size > directory.engine.slice_size:
            return None  # held whole, not as slices
        block = meta.replay()
        encoded = _encoded_fields(block)
        if encoded is None:
            return None
        by_operator = meta.freshness(policy).lifetime.source == "default"
        plan = _Plan(
            meta,
            policy,
            block,
            keys.slice_key_prefix(object_key, meta.version),
            *encoded,
            by_operator,
        )
        replaced = self._plans.get(object_key)
        if replaced is not None:
            self.plan_body_bytes -= len(replaced.body)
        if len(self._plans) >= PLANS_KEPT:
            self._plans.clear()
            self.plan_body_bytes = 0
        self._plans[object_key] = plan
        return plan

    def _keep_body(self, plan: _Plan, data: Any, expires: float) -> None:
        """What a repeat of this plain hit may answer without looking again, within
        PLAN_BODY_MAX and PLAN_BODIES_MAX (all bodies let go when full)."""
        if len(data) > PLAN_BODY_MAX:
            return
        self.plan_body_bytes -= len(plan.body)
        if self.plan_body_bytes + len(data) > PLAN_BODIES_MAX:
            for kept in self._plans.values():
                kept.body, kept.seen = b"", -1
            self.plan_body_bytes = 0
        plan.body, plan.body_expires = data, expires
        plan.seen = CHANGES.count
        self.plan_body_bytes += len(data)
