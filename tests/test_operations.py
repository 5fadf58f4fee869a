"""Operations: PURGE, metrics, stats, admin guards, limits, startup errors, SIGTERM."""

from __future__ import annotations

import json
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


def test_spellings_of_one_uri_are_one_entry_and_one_purge(
    proxy: ProxyFactory, origin: Origin
) -> None:
    """RFC 3986 6.2.2: a percent-encoded unreserved character and the character itself
    name the same resource, as do ``%2d`` and ``%2D``. helper-65: each spelling was its own
    entry, so a PURGE of ``-x.bin`` left ``%2Dx.bin`` served, old, as a HIT."""
    name = "100000-spelt-x.bin"
    with proxy(purge={"enabled": True, "auth_token": TOKEN}, slice_size=SLICE) as url:
        spellings = (
            "/files/100000-%73pelt%2Dx.bin",
            f"/files/{name}",
            "/files/100000-spelt%2dx.bin",
        )
        answers = [httpx.get(f"{url}{path}") for path in spellings]
        fetched = [e for e in origin.app.log_entries() if e["path"] == f"/files/{name}"]
        answer = purge(url, f"/files/{name}")
        after = httpx.get(f"{url}{spellings[0]}")
        # A reserved character stays encoded: "%2F" is not "/", another resource.
        other = httpx.get(f"{url}/files/100000-spelt%2Fx.bin")
        # A stray "%" is not decoded around (helper-66: "%%32F" became "%2F", the key of
        # the resource just fetched, and got its bytes as a HIT).
        stray = httpx.get(f"{url}/files/100000-spelt%%32Fx.bin")
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT", "HIT"]
    assert {sha256(a.content) for a in answers} == {expected_sha256(name)}
    # The first spelling's two slices, once: the other spellings were hits.
    assert sorted(e["range"] for e in fetched) == ["bytes=0-65535", "bytes=65536-99999"]
    assert answer.status_code == 200 and answer.json()["purged"] >= 1
    assert after.status_code == 200 and after.headers["x-cache"] == "MISS"
    assert other.headers.get("x-cache") != "HIT"
    assert stray.headers.get("x-cache") != "HIT"


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
    assert ("cache_hit_rate", ()) not in values  # a lifetime ratio: computed in PromQL
    assert value("slicecache_requests_total", method="GET", status_class="2xx", cache="HIT") == 1
    assert value("slicecache_requests_total", method="GET", status_class="2xx", cache="MISS") == 1
    assert value("slicecache_requests_total", method="PURGE", status_class="4xx", cache="-") == 1
    # Both slices came from the origin: slice 0 with the probe, slice 1 by the engine.
    assert value("slicecache_slice_sources_total", source="miss") == 2
    # The hit read both slices from L1. The miss may have read slice 1 from L1 too, when its
    # fill had finished and been stored before the reader got to it (the machine's pace decides).
    assert value("slicecache_slice_sources_total", source="hit_l1") in (2, 3)
    # What X-Cache-Slices told the clients, summed.
    told = [r.headers["x-cache-slices"] for r in (miss, hit)]
    assert told == ["hit=0, miss=2", "hit=2, miss=0"]
    assert value("slicecache_response_slices_total", result="hit") == 2
    assert value("slicecache_response_slices_total", result="miss") == 2
    assert value("slicecache_origin_requests_total") == 2
    assert value("slicecache_origin_responses_total", status_class="2xx") == 2
    assert value("slicecache_origin_response_seconds_count") == 2
    assert value("http_response_bytes_total") >= 200_000
    assert value("slicecache_response_bytes_total") == value("http_response_bytes_total")
    # Proxied requests only (not the PURGE, not the scrape), by result.
    assert value("slicecache_ttfb_seconds_count", cache="MISS") == 1
    assert value("slicecache_ttfb_seconds_count", cache="HIT") == 1
    assert value("process_resident_memory_bytes") > 0
    # The cycle collector's runs by generation: full ones (2) stall the event loop.
    assert value("python_gc_collections_total", generation="0") > 0
    assert ("python_gc_collections_total", (("generation", "2"),)) in values
    assert all("/files/" not in str(labels) for _, labels in values)  # no URL labels


def test_metric_names_follow_prometheus_conventions(proxy: ProxyFactory, tmp_path: Path) -> None:
    with proxy(**tier_settings("both", tmp_path / "l2.bin")) as url:
        warm(url, PATHS[0])
        text = httpx.get(f"{url}/_slicecache/metrics").text
    ours = [
        family
        for family in text_string_to_metric_families(text)
        if not family.name.startswith(("process_", "python_"))
    ]
    aliases = {"cache_hits", "cache_misses", "http_response_bytes"}
    for family in ours:
        assert family.name.startswith("slicecache_") or family.name in aliases, family.name
        assert family.documentation and family.documentation != family.name, family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        else:
            assert not family.name.endswith("_total"), family.name  # a count must be a counter
        for unit in ("_ms", "_milliseconds", "_kb", "_mb", "_mib"):
            assert unit not in family.name, family.name
    names = {family.name for family in ours}
    assert {"slicecache_l2_evictions", "slicecache_l2_entries", "slicecache_l1_hits"} <= names


def test_a_502_is_not_a_miss(proxy: ProxyFactory) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    with proxy(upstream_address=f"127.0.0.1:{dead_port}") as url:
        assert httpx.get(f"{url}/files/1k.bin").status_code == 502
        values = _metric_values(httpx.get(f"{url}/_slicecache/metrics").text)
    assert values[("cache_misses_total", ())] == 0
    assert values[("slicecache_origin_responses_total", (("status_class", "error"),))] == 1


def test_a_body_the_origin_breaks_off_is_one_rate_limited_origin_warning(
    proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A reset mid-body used to log an unrated 'slice fetch failed' per request, naming
    neither the origin, the request nor the exception class."""
    caplog.set_level("WARNING", logger="slicecache")
    path = "/files/300000-broken-body.bin?fault=reset"
    with proxy(slice_size=SLICE, max_retries=0) as url:
        for _ in range(3):
            with pytest.raises(httpx.HTTPError):  # aborted: never a clean short body
                httpx.get(f"{url}{path}").raise_for_status()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    origin_lines = [r for r in warnings if getattr(r, "fields", {}).get("retry") is not None]
    assert len(origin_lines) == 1, [r.getMessage() for r in warnings]
    fields = origin_lines[0].fields  # type: ignore[attr-defined]
    assert fields["method"] == "GET" and fields["target"].startswith("/files/300000-broken")
    assert fields["origin"].startswith("http://127.0.0.1:")
    assert fields["error"].endswith("Error") and fields["request_id"]
    # Nothing else at warning level per request: the access line carries `aborted`.
    assert not [r for r in warnings if "slice fetch failed" in r.getMessage()]


def test_origin_failure_is_one_rate_limited_warning(
    proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    caplog.set_level("WARNING", logger="slicecache")
    with proxy(upstream_address=f"127.0.0.1:{dead_port}", max_retries=0) as url:
        for _ in range(3):
            assert httpx.get(f"{url}/files/1k.bin?n=1").status_code == 502
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("retry") is not None]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # the other two were folded
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["origin"] == f"http://127.0.0.1:{dead_port}"
    assert fields["method"] == "GET" and fields["target"] == "/files/1k.bin?n=1"
    assert fields["error"] == "ConnectError" and fields["errno"] == 111  # ECONNREFUSED
    assert fields["retry"] == 0 and fields["request_id"]
    message = lines[0].getMessage()
    assert f"127.0.0.1:{dead_port}" in message and "ConnectError" in message


def test_rate_limited_log_folds_repeats_into_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from cache.ratelimit import RateLimitedLog

    now = [100.0]
    warnings = RateLimitedLog(logging.getLogger("slicecache.test"), 10.0, clock=lambda: now[0])
    caplog.set_level("WARNING", logger="slicecache.test")
    assert warnings.warning("drop", "dropped")
    assert not warnings.warning("drop", "dropped")
    assert not warnings.warning("drop", "dropped")
    assert warnings.warning("other", "another kind is not held back")
    now[0] += 10
    assert warnings.warning("drop", "dropped")
    folded = [getattr(r, "fields", {}).get("suppressed") for r in caplog.records]
    assert folded == [None, None, 2]


def test_rate_limited_errors_keep_their_level_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from cache.ratelimit import RateLimitedLog

    warnings = RateLimitedLog(logging.getLogger("slicecache.test"), 10.0, clock=lambda: 5.0)
    caplog.set_level("WARNING", logger="slicecache.test")
    try:
        raise OSError(5, "Input/output error")
    except OSError:
        assert warnings.exception("l2_read_error", "L2 read failed")
        assert not warnings.exception("l2_read_error", "L2 read failed")
    assert warnings.error("l2_checkpoint_skipped", "skipped")
    assert [(r.levelno, r.exc_info and r.exc_info[0]) for r in caplog.records] == [
        (logging.ERROR, OSError),
        (logging.ERROR, False),
    ]


def test_l2_state_is_logged_when_it_opens(
    proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="slicecache")
    settings = tier_settings("both", tmp_path / "l2.bin")
    with proxy(**settings) as url:
        warm(url, PATHS[0])
    with proxy(**settings):
        pass
    records = [getattr(r, "fields", {}) for r in caplog.records]
    opened = [fields for fields in records if fields.get("event") == "l2_open"]
    assert len(opened) == 2
    assert opened[0]["entries"] == 0 and opened[1]["entries"] >= 2
    assert opened[1]["bytes"] >= 100_000 and opened[1]["recovery_seconds"] >= 0


def test_write_behind_drops_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from app.engine.pressure import PressureWatch
    from cache.memory import MemoryStore
    from cache.ratelimit import RateLimitedLog
    from cache.tiered import TieredStore

    store = TieredStore(MemoryStore(1 << 20), None, queue_size=1)
    watch = PressureWatch(store, RateLimitedLog(logging.getLogger("slicecache"), 0.0))
    caplog.set_level("WARNING", logger="slicecache")
    watch.check()
    store.counters["write_behind_dropped"] += 5
    watch.check()
    watch.check()  # nothing new: nothing logged
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event")]
    assert [(r.fields["event"], r.fields["count"]) for r in lines] == [  # type: ignore[attr-defined]
        ("write_behind_dropped", 5)
    ]


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
        ("slicesize", "4m", "SLICECACHE_SLICESIZE (did you mean SLICECACHE_SLICE_SIZE?)"),
        ("raw_disk_cache__blocksize", "4k", "did you mean SLICECACHE_RAW_DISK_CACHE__BLOCK_SIZE"),
        ("upstream_address", "origin", "must carry a port"),
        ("upstream_address", "bad_host:80", "not a host name"),
        ("l1_cache_size_bytes", "64MB", "units are powers of 1024"),
        # A misspelt key in a nested setting's JSON form was silently ignored.
        ("raw_disk_cache", '{"device_pth": "/x"}', "__DEVICE_PTH: Extra inputs are not"),
        ("purge", '{"enabld": true}', "__ENABLD: Extra inputs are not permitted"),
        # A nested setting that is not JSON: the line named the field, not the variable.
        ("raw_disk_cache", "{", "not valid JSON"),
        # The hint for a bracketed IPv6 literal without a port was itself refused (::1:80).
        ("upstream_address", "[::1]", "e.g. [::1]:80"),
    ],
)
def test_invalid_setting_stops_startup_with_one_line(variable: str, value: str, rule: str) -> None:
    for command in (
        [sys.executable, "-m", "app.ops.cli"],
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
    ):
        result = subprocess.run(
            command, env=_env(**{variable: value}), capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "slicecache:" in line]
        assert len(lines) == 1, result.stderr
        # The line names the variable as it is set, and says what is wrong with it.
        assert f"SLICECACHE_{variable.upper()}" in lines[0], lines[0]
        assert rule in lines[0], lines[0]
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("which", ["port", "admin_port"])
def test_a_port_in_use_is_one_line_not_a_traceback(which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        free = _free_port()
        main, admin = (busy, free + 1) if which == "port" else (free, busy)
        env = _env(port=str(main), admin_port=str(admin), upstream_address="127.0.0.1:9")
        commands = [[sys.executable, "-m", "app.ops.cli"]]
        if which == "admin_port":  # plain uvicorn binds --port itself (its own message)
            commands.append([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(main)])
        for command in commands:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 3, done.stderr
            assert "Traceback" not in done.stderr, done.stderr
            lines = [line for line in done.stderr.splitlines() if "slicecache:" in line]
            assert len(lines) == 1 and f":{busy} (" in lines[0], done.stderr


def _start_failure(env: dict[str, str]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of both ways to start, each given ``env``."""
    results = []
    for command in (
        [sys.executable, "-m", "app.ops.cli"],
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        results.append((done.returncode, done.stdout, done.stderr))
    return results


def _l2_env(device: Path, **more: str) -> dict[str, str]:
    return _env(
        port=str(_free_port()),
        enable_l2_cache="true",
        raw_disk_cache__device_path=str(device),
        raw_disk_cache__total_size="64MiB",
        **more,
    )


def _assert_one_line(results: list[tuple[int, str, str]], needle: str) -> None:
    for code, stdout, stderr in results:
        assert code == 3, (code, stdout, stderr)
        lines = [line for line in (stdout + stderr).splitlines() if "slicecache:" in line]
        assert len(lines) == 1 and needle in lines[0], (stdout, stderr)
        assert "Traceback" not in stdout + stderr
        assert "Application startup failed" not in stdout + stderr  # said once, by us


def test_l2_device_in_a_non_directory_is_one_line_and_exit_3(tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    _assert_one_line(_start_failure(_l2_env(afile / "l2.bin")), "Not a directory")


def test_l2_device_with_other_geometry_is_one_line_and_exit_3(tmp_path: Path) -> None:
    device = tmp_path / "l2.bin"
    ok = subprocess.run(
        [sys.executable, "-m", "cache.rawdisk", "format", str(device), "--size", str(64 << 20)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The format CLI is part of the product: a failure here is a failure, not a skip.
    assert ok.returncode == 0, f"cannot format a device from the CLI: {ok.stderr.strip()}"
    results = _start_failure(_l2_env(device, raw_disk_cache__block_size="8k"))
    _assert_one_line(results, "cannot open the L2 device")


def test_l2_device_locked_by_another_process_is_one_line_and_exit_3(
    origin: Origin, tmp_path: Path
) -> None:
    device = tmp_path / "l2.bin"
    settings = {
        "enable_l2_cache": "true",
        "raw_disk_cache__device_path": str(device),
        "raw_disk_cache__total_size": "64MiB",
    }
    with proxy_process(origin, **settings):
        results = _start_failure(_l2_env(device))
    _assert_one_line(results, "cannot open the L2 device")


def test_sizes_accept_one_unit_syntax() -> None:
    from settings import Settings, parse_size

    assert [parse_size(v) for v in ("1MiB", "64m", "4GiB", "10Gi", "65536", "64k")] == [
        1 << 20,
        64 << 20,
        4 << 30,
        10 << 30,
        65536,
        64 << 10,
    ]
    for bad in ("64MB", "1.5m", "ten", "-1", "1 GB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    parsed = Settings(
        slice_size="256k",
        l1_cache_size_bytes="1GiB",
        max_in_flight_bytes="64m",
        raw_disk_cache={"total_size": "4Gi", "block_size": "8KiB"},
    )
    assert (parsed.slice_size, parsed.l1_cache_size_bytes) == (256 << 10, 1 << 30)
    assert parsed.raw_disk_cache.total_size == 4 << 30
    assert parsed.raw_disk_cache.block_size == 8192


@pytest.mark.parametrize(
    ("address", "normal"),
    [
        ("origin:80", "http://origin:80"),
        ("https://origin.example", "https://origin.example:443"),
        ("10.1.2.3:8081", "http://10.1.2.3:8081"),
        ("[::1]:8081", "http://[::1]:8081"),
        ("origin", None),
        ("origin:0", None),
        ("origin:99999", None),
        ("or igin:80", None),
        ("-origin:80", None),
        ("user:pw@origin:80", None),
        ("origin:80/path", None),
    ],
)
def test_upstream_address_is_a_host_and_port(address: str, normal: str | None) -> None:
    from settings import upstream_url

    if normal is None:
        with pytest.raises(ValueError):
            upstream_url(address)
    else:
        assert upstream_url(address) == normal


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def proxy_process(origin: Origin, **settings: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    env = _env(upstream_address=origin.url, port=str(port), **settings)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.ops.cli"],
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


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_responses_still_running_when_the_grace_ends_are_a_503_or_cut_not_errors(
    origin: Origin,
) -> None:
    """uvicorn cancels what still runs when the shutdown grace is over. A response whose
    head was not sent gets a 503 and one whose head was sent is cut (the client sees a
    short body on a closed connection); neither is uvicorn's traceback and 500
    (helper-40)."""
    token = "grace-ends"
    waiting = f"/files/256k-grace-cold.bin?hold={token}"  # the probe is held: no head yet
    # Slice 0 comes, the next one's answer never does: the head went out.
    stalled = f"/files/256k-grace-stalled.bin?fault=hang&fault_from={SLICE}"
    settings = {"drain_seconds": "0", "shutdown_grace_seconds": "0.5", "slice_size": str(SLICE)}
    try:
        with proxy_process(origin, **settings) as (process, url):
            host, port = url.removeprefix("http://").split(":")
            socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(2)]
            for sock, target in zip(socks, (waiting, stalled), strict=True):
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            wait_for(lambda: origin.app.holding.get(token, 0) >= 1, "the cold probe is held")
            first = socks[1].recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            process.send_signal(signal.SIGTERM)
            answers = [_read_until_closed(sock) for sock in socks]
            answers[1] = first + answers[1]
            for sock in socks:
                sock.close()
            assert process.wait(30) == 0
            assert process.stderr is not None
            errors = process.stderr.read()
    finally:
        origin.app.release(token)
    assert answers[0].startswith(b"HTTP/1.1 503")
    head, _, body = answers[1].partition(b"\r\n\r\n")
    assert b"content-length: 262144" in head.lower() and len(body) < 256 * 1024
    assert "Exception in ASGI application" not in errors
    assert "ASGI callable returned" not in errors


def test_every_origin_request_is_counted_once(proxy: ProxyFactory) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    with proxy(enable_cache=False) as url:
        httpx.post(f"{url}/echo/counted", content=b"x")  # pass-through
        text = httpx.get(f"{url}/_slicecache/metrics").text
    values = _metric_values(text)
    assert values[("slicecache_origin_requests_total", ())] == 1
    with proxy(upstream_address=f"127.0.0.1:{dead_port}") as url:
        assert httpx.get(f"{url}/files/1k.bin").status_code == 502
        text = httpx.get(f"{url}/_slicecache/metrics").text
    values = _metric_values(text)
    assert values[("slicecache_origin_requests_total", ())] == 1
    assert values[("slicecache_errors_total", (("kind", "upstream_connection"),))] == 1


# --- both ways to start behave the same ---------------------------------------------------

START_COMMANDS = {
    "console-script": [sys.executable, "-m", "app.ops.cli"],
    "plain-uvicorn": [sys.executable, "-m", "uvicorn", "app.main:app"],
}


def _answer_if(response: httpx.Response, status: int) -> httpx.Response | None:
    return response if response.status_code == status else None


@pytest.mark.parametrize("start", sorted(START_COMMANDS))
def test_both_starts_behave_the_same(origin: Origin, start: str) -> None:
    port, admin_port = _free_port(), _free_port()
    env = _env(
        upstream_address=origin.url,
        port=str(port),
        admin_port=str(admin_port),
        admin_allow_networks="127.0.0.0/8",
        drain_seconds="3",
    )
    command = list(START_COMMANDS[start])
    if start == "plain-uvicorn":
        command += ["--port", str(port)]  # uvicorn's own flag; everything else default
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{admin}/_slicecache/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "did not start"
            time.sleep(0.05)
        echoed = httpx.get(f"{url}/echo/who", headers={"x-forwarded-for": "6.6.6.6"})
        cached = httpx.get(f"{url}/files/1k.bin")
        spoofed = httpx.get(f"{admin}/_slicecache/healthz", headers={"x-forwarded-for": "10.9.9.9"})
        admin_on_main = httpx.get(f"{url}/_slicecache/healthz")
        process.send_signal(signal.SIGTERM)
        # The signal is handled at the server's next tick (plain uvicorn: up to 0.1 s): poll
        # readyz until it says draining, well within DRAIN_SECONDS (3 s).
        draining = wait_for(
            lambda: _answer_if(httpx.get(f"{admin}/_slicecache/readyz"), 503),
            timeout=2.5,
            message="readyz never said draining",
        )
        assert draining is not None  # wait_for returns only a truthy answer
        served_while_draining = httpx.get(f"{url}/files/1k.bin")
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=10)[0]
    for response in (echoed, cached):
        assert len(response.headers.get_list("date")) == 1, response.headers
        assert "server" not in response.headers
    # The client's claim is passed on, the TCP peer appended: not replaced by the claim.
    sent = dict(echoed.json()["headers"])["x-forwarded-for"]
    assert sent == "6.6.6.6, 127.0.0.1"
    assert spoofed.status_code == 200  # the peer (127.0.0.1) is allowed; the claim ignored
    assert admin_on_main.status_code == 404
    assert draining.status_code == 503 and served_while_draining.status_code == 200
    assert code == 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, output
    entries = [json.loads(line) for line in lines]  # every line JSON, the first one too
    events = [entry.get("event") for entry in entries]
    assert "drain_start" in events and "drain_end" in events
    requests = [entry for entry in entries if entry.get("msg") == "request"]
    assert requests and all(entry["client"] == "127.0.0.1" for entry in requests)


def test_trusted_proxies_name_the_client(proxy: ProxyFactory) -> None:
    with proxy(admin_allow_networks=["10.1.0.0/16"]) as url:
        untrusted = httpx.get(f"{url}/_slicecache/healthz", headers={"x-forwarded-for": "10.1.2.3"})
    with proxy(admin_allow_networks=["10.1.0.0/16"], trusted_proxies=["127.0.0.0/8"]) as url:
        trusted = httpx.get(f"{url}/_slicecache/healthz", headers={"x-forwarded-for": "10.1.2.3"})
        outsider = httpx.get(
            f"{url}/_slicecache/healthz", headers={"x-forwarded-for": "10.1.2.3, 8.8.8.8"}
        )
    assert untrusted.status_code == 403
    assert trusted.status_code == 200
    assert outsider.status_code == 403  # the right-most untrusted hop is the client


def test_the_lock_pins_every_requirement() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for items in project["optional-dependencies"].values():
        wanted += items
    pinned = {
        canonicalize_name(line.split("==")[0])
        for line in (root / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    missing = []
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate():
            if canonicalize_name(requirement.name) not in pinned:
                missing.append(requirement.name)
    assert missing == [], "run `make lock`"
    assert (root / "LICENSE").read_text().startswith("\n                                 Apache")


@pytest.mark.parametrize("grace", [0.0, 0.5])
def test_plain_uvicorn_takes_the_grace_setting_as_the_console_script_does(grace: float) -> None:
    """0 = no grace under `slicecache`; plain uvicorn left its default None, which waits
    for in-flight responses without limit, and rounded 0.5 up to 1."""
    import logging

    import uvicorn

    from app.ops.plainstart import _adopt_config
    from settings import Settings

    config = uvicorn.Config("app.main:app", log_config=None)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        _adopt_config(config, Settings(shutdown_grace_seconds=grace))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert config.timeout_graceful_shutdown == grace


def test_plain_uvicorn_config_gets_the_console_scripts_choices() -> None:
    import logging

    import uvicorn

    from app.edge.httpserver import HttpProtocol
    from app.ops.plainstart import _adopt_config
    from settings import Settings

    config = uvicorn.Config("app.main:app", log_config=None)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:  # it installs the JSON handler on the root logger: give pytest's back
        _adopt_config(config, Settings(keep_alive_seconds=80, shutdown_grace_seconds=7))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert config.timeout_keep_alive == 80  # above a load balancer's 60 s idle timeout
    assert config.timeout_graceful_shutdown == 7
    assert (config.date_header, config.server_header, config.proxy_headers) == (False,) * 3
    assert config.http is HttpProtocol and config.access_log is False
    assert Settings().keep_alive_seconds > 60
