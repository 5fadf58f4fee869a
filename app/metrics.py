"""Prometheus metrics: one registry per app, no label built from a URL.

Per-request figures (TTFB, requests, bytes) are recorded as requests end. Everything the
engine, the directory and the stores count anyway (slices, origin requests, retries,
queue depth, every ``raw_disk_cache_*`` figure) is read at scrape time by a collector, so
the hot path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TTFB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CACHE_HITS = frozenset({"HIT", "STALE", "REVALIDATED"})
CACHE_MISSES = frozenset({"MISS", "PARTIAL"})


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


class _RuntimeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        counters = m.counters
        slices = CounterMetricFamily(
            "slicecache_slices", "Slices served, by where they came from", labels=["outcome"]
        )
        for outcome, count in {**counters.slices, **m.slice_hits()}.items():
            slices.add_metric([outcome], count)
        yield slices
        errors = CounterMetricFamily("slicecache_errors", "Failures, by kind", labels=["kind"])
        for kind, value in sorted(counters.errors.items()):
            errors.add_metric([kind], value)
        yield errors
        purges = CounterMetricFamily(
            "slicecache_purges", "PURGE requests, by scope", labels=["scope"]
        )
        for scope, value in counters.purges.items():
            purges.add_metric([scope], value)
        yield purges
        yield CounterMetricFamily(
            "slicecache_upstream_bytes",
            "Body bytes received from the origin for slices",
            value=counters.upstream_bytes,
        )
        yield CounterMetricFamily(
            "slicecache_upstream_requests",
            "Requests sent to the origin",
            value=counters.upstream_requests,
        )
        yield CounterMetricFamily(
            "slicecache_retries", "Slice fetches retried after a failure", value=counters.retries
        )
        for name, help_text, source in m.sources:
            figures = source()
            for key, figure in sorted(figures.items()):
                metric_name = f"{name}_{key}"
                if key.endswith("_total"):
                    counter_name = metric_name.removesuffix("_total")
                    yield CounterMetricFamily(counter_name, help_text, value=figure)
                else:
                    yield GaugeMetricFamily(metric_name, help_text, value=figure)
        total = m.hits + m.misses
        yield GaugeMetricFamily(
            "cache_hit_rate",
            "Share of cacheable requests served from cache (hit, stale, revalidated)",
            value=(m.hits / total) if total else 0.0,
        )


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
        self.ttfb = Histogram(
            "http_request_ttfb_seconds",
            "Time from request to the first body byte sent",
            buckets=TTFB_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter("cache_hits", "Requests served from cache", registry=r)
        self.cache_misses = Counter("cache_misses", "Requests that went to the origin", registry=r)
        self.response_bytes = Counter(
            "http_response_bytes", "Body bytes sent to clients", registry=r
        )
        self.requests = Counter(
            "slicecache_requests",
            "Requests, by method, status class and cache status",
            ["method", "status_class", "cache"],
            registry=r,
        )
        r.register(_RuntimeCollector(self))

    def add_source(self, prefix: str, help_text: str, source: FigureSource) -> None:
        """Export every figure of ``source()`` as ``<prefix>_<key>`` at scrape time."""
        self.sources.append((prefix, help_text, source))

    def observe_request(
        self, method: str, status: int, cache: str, sent: int, ttfb: float | None
    ) -> None:
        if ttfb is not None:
            self.ttfb.observe(ttfb)
        self.response_bytes.inc(sent)
        if method not in KNOWN_METHODS:
            method = "other"  # a client may send any token: keep the label set bounded
        self.requests.labels(method, f"{status // 100}xx", cache).inc()
        if cache in CACHE_HITS:
            self.hits += 1
            self.cache_hits.inc()
        elif cache in CACHE_MISSES:
            self.misses += 1
            self.cache_misses.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PURGE"}
)
