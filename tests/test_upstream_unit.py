"""The upstream client and its observing transport, with respx standing in for the origin."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx

from app.ops.metrics import Metrics
from app.upstream.client import UpstreamClient, UpstreamTimeouts
from app.upstream.transport import ObservedTransport
from cache.ratelimit import RateLimitedLog

ORIGIN = "http://origin.test:8081"


def client(router: respx.Router, metrics: Metrics, interval: float = 60.0) -> UpstreamClient:
    warnings = RateLimitedLog(logging.getLogger("slicecache.test"), interval)
    transport = ObservedTransport(
        httpx.MockTransport(router.async_handler), metrics, ORIGIN, warnings
    )
    return UpstreamClient(
        ORIGIN, UpstreamTimeouts(connect=1, read=1, total=None), transport, metrics.counters
    )


async def test_answers_are_counted_by_status_class_and_timed() -> None:
    router = respx.Router(assert_all_called=True)
    router.get(f"{ORIGIN}/a").respond(206, content=b"x" * 10)
    router.get(f"{ORIGIN}/b").respond(503)
    metrics = Metrics()
    upstream = client(router, metrics)
    for path in ("/a", "/b"):
        response = await upstream.send("GET", path, [])
        await response.aclose()
    samples = metrics.registry.get_sample_value
    assert samples("slicecache_origin_responses_total", {"status_class": "2xx"}) == 1
    assert samples("slicecache_origin_responses_total", {"status_class": "5xx"}) == 1
    assert samples("slicecache_origin_response_seconds_count") == 2
    assert metrics.counters.upstream_requests == 2


async def test_a_failure_is_one_warning_with_its_retry_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = respx.Router()
    router.get(f"{ORIGIN}/down").mock(side_effect=httpx.ConnectError("refused"))
    metrics = Metrics()
    upstream = client(router, metrics, interval=0.0)
    caplog.set_level("WARNING", logger="slicecache.test")
    for _ in range(3):  # the same request, retried in the same task
        with pytest.raises(httpx.ConnectError):
            await upstream.send("GET", "/down", [("range", "bytes=0-9")])
    retries = [r.fields["retry"] for r in caplog.records]  # type: ignore[attr-defined]
    assert retries == [0, 1, 2]
    fields = caplog.records[0].fields  # type: ignore[attr-defined]
    assert fields["origin"] == ORIGIN and fields["target"] == "/down"
    assert fields["range"] == "bytes=0-9" and fields["error"] == "ConnectError"
    assert metrics.counters.errors == {"upstream_connection": 3}
    assert (
        metrics.registry.get_sample_value(
            "slicecache_origin_responses_total", {"status_class": "error"}
        )
        == 3
    )
