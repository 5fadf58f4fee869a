"""Failure paths end to end: a killed process, a cut stream, a failed shared fill, a probe
whose owner leaves. Real proxy (in-thread or as a process), real origin, real store."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.origin import expected_bytes, expected_sha256
from tests.conftest import Origin, ProxyFactory, sha256
from tests.test_operations import proxy_process
from tests.waiting import wait_for, wait_until_held

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
SLICE = 64 * 1024


def _stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/_slicecache/stats").json())


def _l2_syncs(url: str) -> int:
    return int(_stats(url)["tiers"]["l2"]["journal_syncs_total"])


def _read_all(url: str) -> tuple[int, bytes, str]:
    """(status, body read, error) of a streamed GET: the error is how the stream ended."""
    body = bytearray()
    try:
        with httpx.stream("GET", url, timeout=30) as response:
            for chunk in response.iter_raw():
                body += chunk
            return response.status_code, bytes(body), ""
    except httpx.HTTPError as error:
        return 0, bytes(body), type(error).__name__


def _verify_device(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache.rawdisk", "verify", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_kill_minus_nine_with_l2_then_restart_serves_the_same_bytes(
    origin: Origin, tmp_path: Path
) -> None:
    device = str(tmp_path / "l2.bin")
    settings = {
        "enable_l2_cache": "true",
        "raw_disk_cache__device_path": device,
        "raw_disk_cache__total_size": str(64 * MiB),
        "raw_disk_cache__sync_interval": "0.05",
        "slice_size": str(SLICE),
    }
    stored, streaming = "1m-kill9-stored.bin", "4m-kill9-streaming.bin"
    with proxy_process(origin, **settings) as (process, url):
        first = httpx.get(f"{url}/files/{stored}", timeout=30)
        assert sha256(first.content) == expected_sha256(stored)
        # Written behind to L2, and a journal sync after that: durable from here on.
        wait_for(lambda: _stats(url)["tiers"]["write_behind"]["queue_depth"] == 0, "drained")
        synced = _l2_syncs(url)
        wait_for(lambda: _l2_syncs(url) >= synced + 2, "two more journal syncs")
        # kill -9 while another download streams and its slices are being written.
        with httpx.stream("GET", f"{url}/files/{streaming}?bandwidth_mbps=2", timeout=30) as r:
            chunks = r.iter_raw()
            next(chunks)
            process.send_signal(signal.SIGKILL)
            assert process.wait(30) == -signal.SIGKILL
            with pytest.raises(httpx.HTTPError):  # the client sees the cut, not a clean end
                for _ in chunks:
                    pass
    # The device the killed process left is consistent: every record checks out.
    verify = _verify_device(device)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert " 0 damaged" in verify.stdout, verify.stdout
    origin.app.clear_log()
    with proxy_process(origin, **settings) as (process, url):
        again = httpx.get(f"{url}/files/{stored}", timeout=30)
        other = httpx.get(f"{url}/files/{streaming}?bandwidth_mbps=2", timeout=60)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)  # a second signal skips the drain
        assert process.wait(30) == 0
    assert sha256(again.content) == expected_sha256(stored)
    assert again.headers["x-cache"] == "HIT"  # from L2, after the kill
    assert origin.requests_for(f"/files/{stored}") == []
    # Whatever part of the cut download survived, the restart serves it byte-exact.
    assert sha256(other.content) == expected_sha256(streaming)


def test_shutdown_grace_cuts_live_streams_visibly(origin: Origin) -> None:
    name = "8m-grace-cut.bin"
    # Half a second: app/ops/cli.py once passed int(grace) or None to uvicorn, so 0.5 (and 0)
    # meant "no limit" and this stream ran to its end.
    settings = {"drain_seconds": "0", "shutdown_grace_seconds": "0.5", "slice_size": str(SLICE)}
    with proxy_process(origin, **settings) as (process, url):
        result: dict[str, Any] = {}
        started = threading.Event()

        def download() -> None:
            body = bytearray()
            try:
                # 0.25 MB/s per origin request: even 4 in parallel need 8 s for the whole
                # file, far past the grace period.
                target = f"{url}/files/{name}?bandwidth_mbps=0.25"
                with httpx.stream("GET", target, timeout=30) as response:
                    result["length"] = int(response.headers["content-length"])
                    for chunk in response.iter_raw():
                        body += chunk
                        started.set()
                result["error"] = ""
            except httpx.HTTPError as error:
                result["error"] = type(error).__name__
            result["body"] = bytes(body)
            started.set()

        worker = threading.Thread(target=download)
        worker.start()
        assert started.wait(30)
        process.send_signal(signal.SIGTERM)
        worker.join(60)
        assert process.wait(30) == 0
    # The client can tell: its stream ended in an error, not as a clean short body.
    assert result["error"], (len(result["body"]), result.get("length"))
    assert len(result["body"]) < result["length"] == 8 * MiB
    assert result["body"] == expected_bytes(name, 1, 0, len(result["body"]) - 1)


def test_a_shared_fill_that_fails_aborts_every_reader_and_caches_nothing(
    proxy: ProxyFactory, origin: Origin
) -> None:
    name = "1m-shared-fail.bin"
    # The probe (slice 0) succeeds; every later slice is reset mid-body by the origin.
    target = f"/files/{name}?hold=shared-fail&fault_from={SLICE}"
    origin.app.set_fault(name, "reset")
    try:
        with proxy(slice_size=SLICE, max_retries=1) as url:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                readers = [pool.submit(_read_all, f"{url}{target}") for _ in range(4)]
                wait_until_held(origin.app, "shared-fail")  # the probe is out
                origin.app.release("shared-fail")
                results = [reader.result() for reader in readers]
            for status, body, error in results:
                # Headers were sent (the probe succeeded), then the body was cut: an
                # error, never a clean short body, and never wrong bytes.
                assert error, (status, len(body))
                assert len(body) < 1 * MiB
                assert body == expected_bytes(name, 1, 0, len(body) - 1)
            # Each cut is counted as the origin's (its 200 is in 2xx: it went out).
            cut = 'slicecache_responses_incomplete_total{ended_by="origin"} 4.0'
            wait_for(lambda: cut in httpx.get(f"{url}/_slicecache/metrics").text, cut)
            # Nothing of the failed fills was stored: with the origin healthy again, the
            # same URL comes back whole and byte-exact, its later slices fetched anew.
            origin.app.set_fault(name, "")
            before = len(origin.requests_for(f"/files/{name}"))
            again = httpx.get(f"{url}{target}", timeout=30)
    finally:
        origin.app.set_fault(name, "")
    assert again.status_code == 200
    assert sha256(again.content) == expected_sha256(name)
    assert again.headers["x-cache"] != "HIT"
    assert len(origin.requests_for(f"/files/{name}")) > before


def test_probe_owner_leaving_does_not_fail_the_readers_waiting_on_it(
    proxy: ProxyFactory, origin: Origin
) -> None:
    name = "1m-probe-owner-leaves.bin"
    target = f"/files/{name}?hold=owner-leaves"
    with proxy(slice_size=SLICE) as url:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            # The owner gives up after 1 s of waiting for headers (its probe is held).
            owner = pool.submit(httpx.get, f"{url}{target}", timeout=httpx.Timeout(30, read=1.0))
            wait_until_held(origin.app, "owner-leaves")
            waiting = [pool.submit(httpx.get, f"{url}{target}", timeout=60) for _ in range(2)]
            with pytest.raises(httpx.ReadTimeout):
                owner.result()
            origin.app.release("owner-leaves")
            answers = [w.result() for w in waiting]
    for answer in answers:
        assert answer.status_code == 200
        assert sha256(answer.content) == expected_sha256(name)


def test_a_client_gone_while_its_last_bytes_are_buffered_is_counted_as_gone(
    proxy: ProxyFactory,
) -> None:
    """A one-slice hit goes out in one body message; uvicorn hands it to the transport
    without waiting, so a client that hangs up before reading it got none of it although
    the app saw its response through. It is counted (and logged) as cut by the client."""
    name = "8m-one-piece.bin"
    with proxy(slice_size=8 * MiB) as url:
        assert httpx.get(f"{url}/files/{name}", timeout=30).content == expected_bytes(name)
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # 8 MiB cannot fit
            sock.settimeout(30)
            sock.connect((host, int(port)))
            # X-Forwarded-For: not the fast path (tested there), the ASGI app's response.
            head = f"GET /files/{name} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
            sock.sendall(head.encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # the body is on its way
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cut = 'slicecache_responses_incomplete_total{ended_by="client"} 1.0'
        wait_for(lambda: cut in httpx.get(f"{url}/_slicecache/metrics").text, cut)
