"""Prometheus metrics: one registry per app, one ``slicecache_`` prefix, no URL labels.

Conventions (https://prometheus.io/docs/practices/naming/): monotonic counts are counters
named ``*_total``, units are base units in the name (``_seconds``, ``_bytes``), ratios are
left to PromQL (``rate(a) / rate(b)``; a lifetime ratio gauge hides every change). Seed
names kept as aliases, because they mean what they say: ``cache_hits_total``,
``cache_misses_total`` and ``http_response_bytes_total``; ``cache_hit_rate`` (a lifetime
gauge) and ``http_request_ttfb_seconds`` (mixed admin and proxied requests) are gone:
see README "Metrics" for their replacements.

Per-request figures (TTFB, requests, bytes, the response's slices) are recorded as
requests end; origin figures by :mod:`app.upstream.transport` per exchange. Everything the engine,
the directory and the stores count anyway is read at scrape time by a collector, so the
hot path pays nothing for it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# A *_created gauge per counter and histogram doubles the series and reads, in the text
# format, as a family of its own that breaks the naming rules above.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The fast path's summed counts reach the exported counters at a scrape, or after this
# many hits (so that a registry read some other way is never far behind).
FAST_FLUSH_EVERY = 1024
TTFB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ORIGIN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CACHE_HITS = frozenset({"HIT", "STALE", "REVALIDATED"})
CACHE_MISSES = frozenset({"MISS", "PARTIAL"})
# X-Cache values of a proxied request; "-" is an admin route, PURGE or a refusal.
PROXIED = CACHE_HITS | CACHE_MISSES | {"BYPASS"}
LABELLED_CACHE = PROXIED | {"-"}

# HELP of the figures read at scrape time (exported name -> text). A figure without an
# entry here gets its source's help and its own name spelled out.
FIGURE_HELP = {
    "slicecache_in_flight_bytes": "Bytes of slices being fetched from the origin now "
    "(capped by SLICECACHE_MAX_IN_FLIGHT_BYTES)",
    "slicecache_in_flight_limit_bytes": "The cap on in-flight bytes "
    "(SLICECACHE_MAX_IN_FLIGHT_BYTES)",
    "slicecache_slices_filling": "Slices being fetched from the origin now",
    "slicecache_write_behind_queue_slices": "Slices waiting to be written to L2",
    "slicecache_write_behind_dropped_total": "Slices not written to L2 because the "
    "write-behind queue was full (L2 slower than fills)",
    "slicecache_write_behind_written_total": "Slices written to L2 by the write-behind queue",
    "slicecache_l2_errors_total": "L2 reads or writes that failed (the request was "
    "served from L1 or the origin instead)",
    "slicecache_active_requests": "Requests being served now",
    "slicecache_l1_entries": "Entries (slices and metadata) in the memory tier",
    "slicecache_l1_bytes": "Bytes held by the memory tier",
    "slicecache_l1_capacity_bytes": "Budget of the memory tier (SLICECACHE_L1_CACHE_SIZE_BYTES)",
    "slicecache_l1_hits_total": "Memory tier lookups that found the entry",
    "slicecache_l1_misses_total": "Memory tier lookups that did not",
    "slicecache_l1_rejected_total": "Entries the memory tier refused (larger than its budget)",
    "slicecache_l1_expired_total": "Memory tier entries dropped because they expired",
    "slicecache_l2_leases": "L2 extents lent to responses now (zero-copy reads from the "
    "mapped device; an extent is reused only after its last lease is released)",
    "slicecache_l2_entries": "Objects' slices and metadata records indexed in L2",
    "slicecache_l2_bytes": "Payload bytes stored in L2",
    "slicecache_l2_used_bytes": "Bytes of L2 data blocks in use",
    "slicecache_l2_capacity_bytes": "Bytes of L2 data blocks in all",
    "slicecache_l2_usage_ratio": "Share of L2 data blocks in use (0-1)",
    "slicecache_l2_evictions_total": "L2 entries evicted to make room",
    "slicecache_l2_no_space_total": "L2 writes refused for lack of space after eviction",
    "slicecache_l2_write_errors_total": "L2 writes that failed",
    "slicecache_l2_read_errors_total": "L2 reads that failed",
    "slicecache_l2_checksum_failures_total": "L2 records that failed their checksum (never served)",
}


@dataclass
class EngineCounters:
    """Plain counters the request path increments; exported at scrape time."""

    slices: dict[str, int] = field(default_factory=lambda: {"miss": 0, "coalesced": 0})
    errors: dict[str, int] = field(default_factory=dict)
    purges: dict[str, int] = field(default_factory=lambda: {"url": 0, "prefix": 0, "all": 0})
    upstream_requests: int = 0
    upstream_bytes: int = 0
    retries: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


FigureSource = Callable[[], dict[str, float]]


def _spelled(name: str) -> str:
    return name.removesuffix("_total").replace("_", " ")


class _RuntimeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        counters = m.counters
        slices = CounterMetricFamily(
            "slicecache_slice_sources",
            "Slices the engine delivered, by source: hit_l1, hit_l2, miss (fetched, "
            "including the probe's slice 0), coalesced (tailed another request's fetch)",
            labels=["source"],
        )
        for outcome, count in {**counters.slices, **m.slice_hits()}.items():
            slices.add_metric([outcome], count)
        yield slices
        errors = CounterMetricFamily(
            "slicecache_errors",
            "Failures, by kind (upstream_timeout, upstream_connection, slice_* ...)",
            labels=["kind"],
        )
        for kind, value in sorted(counters.errors.items()):
            errors.add_metric([kind], value)
        yield errors
        purges = CounterMetricFamily(
            "slicecache_purges", "PURGE requests accepted, by scope", labels=["scope"]
        )
        for scope, value in counters.purges.items():
            purges.add_metric([scope], value)
        yield purges
        yield CounterMetricFamily(
            "slicecache_origin_slice_bytes",
            "Body bytes received from the origin for slices",
            value=counters.upstream_bytes,
        )
        yield CounterMetricFamily(
            "slicecache_origin_requests",
            "Requests sent to the origin (pass-through, probes, slices, revalidations)",
            value=counters.upstream_requests,
        )
        yield CounterMetricFamily(
            "slicecache_origin_retries",
            "Slice fetches retried after a failure",
            value=counters.retries,
        )
        for prefix, help_text, source in m.sources:
            for key, figure in sorted(source().items()):
                name = f"{prefix}_{key}"
                text = FIGURE_HELP.get(name, f"{help_text}: {_spelled(key)}")
                if key.endswith("_total"):
                    yield CounterMetricFamily(name.removesuffix("_total"), text, value=figure)
                else:
                    yield GaugeMetricFamily(name, text, value=figure)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counters = EngineCounters()
        self.sources: list[tuple[str, str, FigureSource]] = []
        # Slices served by each tier: {"hit_l1": n, "hit_l2": n}, read from the store.
        self.slice_hits: FigureSource = lambda: {"hit_l1": 0.0, "hit_l2": 0.0}
        self.hits = 0
        self.misses = 0
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, fds
        PlatformCollector(registry=r)
        # python_gc_collections_total{generation}: a rise of generation 2 means full
        # collections, which stall the loop (app/main.py: YOUNG_GC_THRESHOLD).
        GCCollector(registry=r)
        self.ttfb = Histogram(
            "slicecache_ttfb_seconds",
            "Time from a proxied request to its first body byte, by X-Cache result "
            "(admin routes, PURGE and refusals are not counted)",
            ["cache"],
            buckets=TTFB_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "cache_hits",
            "Proxied requests answered from cache (X-Cache HIT, STALE, REVALIDATED); seed alias",
            registry=r,
        )
        self.cache_misses = Counter(
            "cache_misses",
            "Proxied requests answered at least partly by the origin (X-Cache MISS, "
            "PARTIAL), not counting 5xx answers; seed alias",
            registry=r,
        )
        self.response_bytes = Counter(
            "http_response_bytes",
            "Body bytes sent to clients (all routes); seed alias of "
            "slicecache_response_bytes_total",
            registry=r,
        )
        self.sent_bytes = Counter(
            "slicecache_response_bytes", "Body bytes sent to clients (all routes)", registry=r
        )
        self.requests = Counter(
            "slicecache_requests",
            "Requests, by method, status class and X-Cache result ('-' for admin routes, "
            "PURGE and refusals)",
            ["method", "status_class", "cache"],
            registry=r,
        )
        # A response cut short still counts under the status it started with (a 200 whose
        # origin failed mid-body is in 2xx): this says how many ended early, and who ended it.
        self.incomplete = Counter(
            "slicecache_responses_incomplete",
            "Responses that ended before their last byte, by who ended them: client "
            "(disconnected), origin (failed or changed mid-body) or server (still running "
            "when the shutdown grace ended); also counted in slicecache_requests_total "
            "under the status they started with",
            ["ended_by"],
            registry=r,
        )
        self.response_slices = Counter(
            "slicecache_response_slices",
            "Slices of sliced responses as X-Cache-Slices reports them: hit (cached when "
            "the response started) or miss",
            ["result"],
            registry=r,
        )
        self.origin_latency = Histogram(
            "slicecache_origin_response_seconds",
            "Time from sending a request to the origin to its response headers",
            buckets=ORIGIN_BUCKETS,
            registry=r,
        )
        self.origin_responses = Counter(
            "slicecache_origin_responses",
            "Origin answers by status class (1xx-5xx), 'error' when none came "
            "(connect error, timeout, reset)",
            ["status_class"],
            registry=r,
        )
        self.fast_path_hits = Counter(
            "slicecache_fast_path_hits",
            "Fresh hits answered by the protocol's fast path (app/fasthit.py); they are "
            "counted in slicecache_requests_total too",
            registry=r,
        )
        self.edge_refusals = Counter(
            "slicecache_edge_refusals",
            "Request heads the HTTP edge refused before the app saw them, by status: 400 "
            "malformed, 408 head timeout, 414/431 head too large, 503 connection cap "
            "(not in slicecache_requests_total)",
            ["status"],
            registry=r,
        )
        self.edge_ignored = Counter(
            "slicecache_edge_ignored",
            "Requests the HTTP edge answered with part of them ignored: 'upgrade' (an Upgrade "
            "answered in HTTP/1.1), 'trailer' (a chunked body's trailer fields, dropped)",
            ["what"],
            registry=r,
        )
        self.send_timeouts = Counter(
            "slicecache_client_send_timeouts",
            "Connections closed because the client took none of a response's bytes for "
            "SEND_TIMEOUT seconds (its response is counted as cut by the client)",
            registry=r,
        )
        self.fast_path_failures = Counter(
            "slicecache_fast_path_failures",
            "Requests the fast path failed on (a bug: logged, rate-limited); each was then "
            "served the normal way",
            registry=r,
        )
        r.register(_RuntimeCollector(self))
        # Label children resolved once, not per request: labels() builds and looks up a
        # tuple under a lock every time. Keys are bounded (methods, status classes and
        # X-Cache values are small closed sets).
        self._request_children: dict[tuple[str, int, str], Counter] = {}
        self._ttfb_children: dict[str, Histogram] = {}
        self._slices_hit = self.response_slices.labels("hit")
        # The fast path's hits not yet added to the counters (observe_fast_hit): by method.
        self._fast_pending: dict[str, int] = {}
        self._fast_sent = 0
        self._fast_slices = 0
        self._fast_flushed_hits = 0
        # ... and their TTFBs: per bucket of the HIT child of ``ttfb``, and their sum.
        self._fast_ttfb_child: Histogram = self.ttfb.labels("HIT")
        self._ttfb_children["HIT"] = self._fast_ttfb_child
        self._fast_ttfb_bounds: list[float] = list(self._fast_ttfb_child._upper_bounds)
        self._fast_ttfb_counts = [0] * len(self._fast_ttfb_bounds)
        self._fast_ttfb_sum = 0.0
        self._slices_miss = self.response_slices.labels("miss")
        self._origin_children: dict[str, Counter] = {}

    def count_origin_answer(self, status_class: str) -> None:
        """One origin answer of ``status_class`` ("2xx"..., "error"), without labels()."""
        child = self._origin_children.get(status_class)
        if child is None:
            child = self._origin_children[status_class] = self.origin_responses.labels(status_class)
        child.inc()

    def add_source(self, prefix: str, help_text: str, source: FigureSource) -> None:
        """Export every figure of ``source()`` as ``<prefix>_<key>`` at scrape time."""
        self.sources.append((prefix, help_text, source))

    def observe_request(
        self,
        method: str,
        status: int,
        cache: str,
        sent: int,
        ttfb: float | None,
        slices: tuple[int, int] | None = None,
        ended_by: str | None = None,
    ) -> None:
        """``ended_by``: who cut the response short ("client", "origin" or "server"), None
        if whole."""
        if ended_by is not None:
            self.incomplete.labels(ended_by).inc()
        if ttfb is not None and cache in PROXIED:
            ttfb_child = self._ttfb_children.get(cache)
            if ttfb_child is None:
                ttfb_child = self._ttfb_children[cache] = self.ttfb.labels(cache)
            ttfb_child.observe(ttfb)
        self.response_bytes.inc(sent)
        self.sent_bytes.inc(sent)
        key = (method, status // 100, cache)
        child = self._request_children.get(key)
        if child is None:
            label = method if method in KNOWN_METHODS else "other"  # bounded label set
            child = self.requests.labels(label, f"{status // 100}xx", cache)
            if method in KNOWN_METHODS and cache in LABELLED_CACHE:
                self._request_children[key] = child  # only bounded keys are kept
        child.inc()
        if slices is not None:
            self._slices_hit.inc(slices[0])
            self._slices_miss.inc(slices[1])
        if status >= 500:
            return  # a 502/504 is a failure, neither a hit nor a miss
        if cache in CACHE_HITS:
            self.hits += 1
            self.cache_hits.inc()
        elif cache in CACHE_MISSES:
            self.misses += 1
            self.cache_misses.inc()

    def observe_fast_hit(self, method: str, sent: int, ttfb: float, slices: int = 1) -> None:
        """:meth:`observe_request` for a fresh hit of ``slices`` stored slices (as its
        X-Cache-Slices says, a HEAD's too) answered by the fast path (app/fasthit.py).
        Its counters are summed here and added to the exported ones at once
        (:meth:`flush`, before every scrape): a dozen locked increments per hit were a
        third of the fast path's work. The TTFB goes to its bucket as ``Histogram.observe``
        puts it (the first upper bound >= it). ``hits`` is updated at once."""
        self._fast_ttfb_counts[bisect_left(self._fast_ttfb_bounds, ttfb)] += 1
        self._fast_ttfb_sum += ttfb
        self.hits += 1
        pending = self._fast_pending
        pending[method] = pending.get(method, 0) + 1
        self._fast_sent += sent
        self._fast_slices += slices
        if self.hits - self._fast_flushed_hits >= FAST_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Add the fast path's summed counts to the exported counters."""
        pending = self._fast_pending
        if not pending:
            return
        self._fast_pending = {}
        sent, self._fast_sent = self._fast_sent, 0
        slices, self._fast_slices = self._fast_slices, 0
        # What observe() would have added, by bucket (prometheus_client keeps a histogram
        # child as its per-bucket counts and sum: tests/test_hotpath.py holds them equal).
        histogram = self._fast_ttfb_child
        counts = self._fast_ttfb_counts
        for index, count in enumerate(counts):
            if count:
                histogram._buckets[index].inc(count)
                counts[index] = 0
        histogram._sum.inc(self._fast_ttfb_sum)
        self._fast_ttfb_sum = 0.0
        self._fast_flushed_hits = self.hits
        total = 0
        for method, count in pending.items():
            key = (method, 2, "HIT")
            child = self._request_children.get(key)
            if child is None:
                child = self._request_children[key] = self.requests.labels(method, "2xx", "HIT")
            child.inc(count)
            total += count
        self.response_bytes.inc(sent)
        self.sent_bytes.inc(sent)
        self._slices_hit.inc(slices)
        self.cache_hits.inc(total)
        self.fast_path_hits.inc(total)

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)


KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PURGE"}
)
