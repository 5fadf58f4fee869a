"""Operations: PURGE, metrics, stats, admin guards, limits, startup errors, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.origin import expected_sha256
from tests.conftest import Origin, ProxyFactory, sha256
from tests.waiting import wait_for

TOKEN = "s3cret-token"
SLICE = 64 * 1024


@pytest.fixture(autouse=True)
def fresh_origin(origin: Origin) -> None:
    origin.app.clear_log()
    origin.app.versions.clear()
    origin.app.sticky_faults.clear()


def tier_settings(tier: str, device: Path) -> dict[str, Any]:
    settings: dict[str, Any] = {"slice_size": SLICE}
    if tier in ("l2", "both"):
        settings["enable_l2_cache"] = True
        settings["raw_disk_cache"] = {"device_path": str(device), "total_size": 64 * 1024 * 1024}
    if tier == "l2":
        settings["l1_cache_size_bytes"] = 0
    return settings


def settle(url: str) -> None:

    def drained() -> bool:
        stats = httpx.get(f"{url}/_slicecache/stats").json()
        return bool(stats["tiers"]["write_behind"]["queue_depth"] == 0)

    wait_for(drained, "the write-behind queue drains")


def purge(url: str, path: str, token: str | None = TOKEN, **headers: str) -> httpx.Response:
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    if token is not None:
        fields["authorization"] = f"Bearer {token}"
    return httpx.request("PURGE", f"{url}{path}", headers=fields)


def warm(url: str, *paths: str) -> None:
    for path in paths:
        assert httpx.get(f"{url}{path}").status_code == 200
    settle(url)


PATHS = ("/files/100000-p1.bin", "/files/100000-p2.bin", "/files/100000-q.bin")


@pytest.mark.parametrize("tier", ["l1", "l2", "both"])
@pytest.mark.parametrize(
    ("scope", "path", "headers", "gone"),
    [
        ("url", "/files/100000-p1.bin", {}, {PATHS[0]}),
        ("prefix", "/files/100000-p", {"x_purge_prefix": "true"}, {PATHS[0], PATHS[1]}),
        ("prefix", "/files/100000-p*", {}, {PATHS[0], PATHS[1]}),
        ("all", "/", {"x_purge_all": "true"}, set(PATHS)),
    ],
)
def test_purge_scopes(
    proxy: ProxyFactory,
    origin: Origin,
    tmp_path: Path,
    tier: str,
    scope: str,
    path: str,
    headers: dict[str, str],
    gone: set[str],
) -> None:
    settings = tier_settings(tier, tmp_path / "l2.bin")
    with proxy(purge={"enabled": True, "auth_token": TOKEN}, **settings) as url:
        warm(url, *PATHS)
        answer = purge(url, path, **headers)
        after = {p: httpx.get(f"{url}{p}").headers["x-cache"] for p in PATHS}
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["scope"] == scope and body["purged"] >= len(gone)
    for p in PATHS:
        assert (after[p] == "MISS") == (p in gone), (p, after)


@pytest.mark.parametrize(
    ("enabled", "token", "status"),
    [(True, "wrong", 401), (True, None, 401), (False, TOKEN, 405)],
)
def test_purge_refused_changes_nothing(
    proxy: ProxyFactory, enabled: bool, token: str | None, status: int
) -> None:
    with proxy(purge={"enabled": enabled, "auth_token": TOKEN}, slice_size=SLICE) as url:
        warm(url, PATHS[0])
        answer = purge(url, PATHS[0], token=token)
        after = httpx.get(f"{url}{PATHS[0]}")
    assert answer.status_code == status
    assert after.headers["x-cache"] == "HIT"


def test_purge_reaches_objects_only_on_l2_after_restart(
    proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    settings = tier_settings("both", tmp_path / "l2.bin")
    settings["purge"] = {"enabled": True, "auth_token": TOKEN}
    with proxy(**settings) as url:
        warm(url, PATHS[0], PATHS[2])
    with proxy(**settings) as url:  # a new process view: L1 empty, L2 holds both
        answer = purge(url, PATHS[0])
        purged = httpx.get(f"{url}{PATHS[0]}")
        kept = httpx.get(f"{url}{PATHS[2]}")
    assert answer.json()["purged"] >= 1
    assert purged.headers["x-cache"] == "MISS"
    assert len(origin.requests_for(PATHS[0])) == 4  # 2 slices, fetched twice
    assert len(origin.requests_for(PATHS[2])) == 2  # only the first time: L2 served it
    assert sha256(kept.content) == expected_sha256(PATHS[2].rsplit("/", 1)[1])


def test_purge_during_a_fill_does_not_reinsert_old_bytes(
    proxy: ProxyFactory, origin: Origin
) -> None:
    path = "/files/1m-purge-inflight.bin"
    with proxy(purge={"enabled": True, "auth_token": TOKEN}, slice_size=SLICE) as url:
        done = threading.Event()

        def slow_download() -> None:
            httpx.get(f"{url}{path}", params={"bandwidth_mbps": "2"}, timeout=30)
            done.set()

        worker = threading.Thread(target=slow_download)
        worker.start()
        # Purge once the slices after the probe are in flight (the origin has seen them).
        deadline = time.monotonic() + 10
        while len(origin.requests_for(path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert purge(url, f"{path}?bandwidth_mbps=2").json()["purged"] >= 1
        worker.join(30)
        assert done.is_set()
        origin.app.clear_log()
        again = httpx.get(f"{url}{path}?bandwidth_mbps=2")
    # The slices being fetched when the purge came were not stored (slices the download
    # fetched after the purge are new bytes and may be): the next GET is not a full HIT.
    assert again.headers["x-cache"] in ("MISS", "PARTIAL")
    assert int(again.headers["x-cache-slices"].split("miss=")[1]) >= 1


def _metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_after_a_known_workload(proxy: ProxyFactory) -> None:
    path = "/files/100000-metrics.bin"
    with proxy(slice_size=SLICE) as url:
        miss = httpx.get(f"{url}{path}")
        hit = httpx.get(f"{url}{path}")
        httpx.request("PURGE", f"{url}{path}")  # disabled: 405, counted as a request
        text = httpx.get(f"{url}/_slicecache/metrics").text
    assert miss.headers["x-cache"] == "MISS" and hit.headers["x-cache"] == "HIT"
    values = _metric_values(text)

    def value(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]

    assert value("cache_hits_total") == 1
    assert value("cache_misses_total") == 1
    assert value("cache_hit_rate") == 0.5
    assert value("slicecache_requests_total", method="GET", status_class="2xx", cache="HIT") == 1
    assert value("slicecache_requests_total", method="GET", status_class="2xx", cache="MISS") == 1
    assert value("slicecache_requests_total", method="PURGE", status_class="4xx", cache="-") == 1
    assert value("slicecache_slices_total", outcome="miss") == 1  # slice 0 came with the probe
    assert value("slicecache_slices_total", outcome="hit_l1") == 2
    assert value("slicecache_upstream_requests_total") == 2
    assert value("http_response_bytes_total") >= 200_000
    assert value("http_request_ttfb_seconds_count") == 3
    assert value("process_resident_memory_bytes") > 0
    assert all("/files/" not in str(labels) for _, labels in values)  # no URL labels


def test_stats_is_json_with_tiers_and_config(proxy: ProxyFactory, tmp_path: Path) -> None:
    with proxy(**tier_settings("both", tmp_path / "l2.bin")) as url:
        warm(url, PATHS[0])
        stats = httpx.get(f"{url}/_slicecache/stats").json()
    assert stats["ready"] is True
    assert stats["tiers"]["l1"]["entries"] >= 1
    assert stats["tiers"]["l2"]["entries"] >= 1
    assert stats["config"]["slice_size"] == SLICE
    assert "auth_token" not in str(stats)


def test_admin_routes_guarded_by_network(proxy: ProxyFactory) -> None:
    with proxy(admin_allow_networks=["10.0.0.0/8"]) as url:
        assert httpx.get(f"{url}/_slicecache/metrics").status_code == 403
    with proxy(admin_allow_networks=["127.0.0.0/8"]) as url:
        assert httpx.get(f"{url}/_slicecache/metrics").status_code == 200


def test_size_limits(proxy: ProxyFactory) -> None:
    with proxy(max_request_target_bytes=300, max_header_bytes=2048) as url:
        long_target = httpx.get(f"{url}/files/1k.bin?{'x' * 400}")
        big_headers = httpx.get(f"{url}/files/1k.bin", headers={"x-big": "y" * 3000})
    assert long_target.status_code == 414
    assert big_headers.status_code == 431


def test_cache_key_includes_the_forwarded_host(proxy: ProxyFactory, origin: Origin) -> None:
    path = "/echo/host-key"
    # cache_ttl: /echo says nothing about freshness; b must be able to get a's answer.
    with proxy(preserve_host=True, cache_ttl=3600) as url:
        a = httpx.get(f"{url}{path}", headers={"host": "a.example"})
        b = httpx.get(f"{url}{path}", headers={"host": "b.example"})
    assert dict(a.json()["headers"])["host"] == "a.example"
    assert dict(b.json()["headers"])["host"] == "b.example"  # not a's cached answer


# --- processes: startup errors and SIGTERM --------------------------------------------------


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLICECACHE_")}
    env.update({f"SLICECACHE_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("slice_size", "1000", "greater than or equal to 65536"),
        ("upstream_address", "ftp://x:1", "scheme must be http or https"),
        ("raw_disk_cache__block_size", "3000", "must be a power of two"),
        ("slice_patterns", "[", "Expecting value"),  # not JSON
    ],
)
def test_invalid_setting_stops_startup_with_one_line(variable: str, value: str, rule: str) -> None:
    for command in (
        [sys.executable, "-m", "app.cli"],
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
    ):
        result = subprocess.run(
            command, env=_env(**{variable: value}), capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "slicecache:" in line]
        assert len(lines) == 1, result.stderr
        # The line names the variable as it is set, and says what is wrong with it.
        assert f"SLICECACHE_{variable.upper()}:" in lines[0], lines[0]
        assert rule in lines[0], lines[0]
        assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def proxy_process(origin: Origin, **settings: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    env = _env(upstream_address=origin.url, port=str(port), **settings)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/_slicecache/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"the proxy never became ready: {process.poll()=}")
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _ready_answer_503(url: str) -> httpx.Response | None:
    response = httpx.get(f"{url}/_slicecache/readyz")
    return response if response.status_code == 503 else None


def test_sigterm_drains_finishes_streams_and_keeps_l2(origin: Origin, tmp_path: Path) -> None:
    name = "4m-sigterm.bin"
    settings = {
        "enable_l2_cache": "true",
        "raw_disk_cache__device_path": str(tmp_path / "l2.bin"),
        "raw_disk_cache__total_size": str(64 * 1024 * 1024),
        "drain_seconds": "3",
        "shutdown_grace_seconds": "20",
        "slice_size": str(SLICE),
    }
    with proxy_process(origin, **settings) as (process, url):
        result: dict[str, Any] = {}

        def download() -> None:
            response = httpx.get(f"{url}/files/{name}?bandwidth_mbps=2", timeout=60)
            result["sha"] = sha256(response.content)

        worker = threading.Thread(target=download)
        worker.start()
        # The download is under way (its fills reached the origin), then SIGTERM.
        wait_for(lambda: len(origin.requests_for(f"/files/{name}")) >= 2, "the download runs")
        process.send_signal(signal.SIGTERM)
        # During the drain window readiness fails (first poll may still say ready).
        readiness = wait_for(lambda: _ready_answer_503(url), "readiness fails while draining")
        assert readiness is not None
        worker.join(60)
        code = process.wait(60)
    assert readiness.status_code == 503 and "draining" in readiness.text
    assert result["sha"] == expected_sha256(name)  # the stream in flight was finished
    assert code == 0
    origin.app.clear_log()
    # A restart finds in L2 every slice the first process cached.
    with proxy_process(origin, **settings) as (process, url):
        again = httpx.get(f"{url}/files/{name}?bandwidth_mbps=2")
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)  # a second signal skips the drain
        assert process.wait(30) == 0
    assert sha256(again.content) == expected_sha256(name)
    assert origin.requests_for(f"/files/{name}") == []


def test_every_origin_request_is_counted_once(proxy: ProxyFactory) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    with proxy(enable_cache=False) as url:
        httpx.post(f"{url}/echo/counted", content=b"x")  # pass-through
        text = httpx.get(f"{url}/_slicecache/metrics").text
    values = _metric_values(text)
    assert values[("slicecache_upstream_requests_total", ())] == 1
    with proxy(upstream_address=f"127.0.0.1:{dead_port}") as url:
        assert httpx.get(f"{url}/files/1k.bin").status_code == 502
        text = httpx.get(f"{url}/_slicecache/metrics").text
    values = _metric_values(text)
    assert values[("slicecache_upstream_requests_total", ())] == 1
    assert values[("slicecache_errors_total", (("kind", "upstream_connection"),))] == 1
