"""``make run``: the demo origin on 127.0.0.1:8081 and slicecache in front of it on :8080.

Ports: DEMO_ORIGIN_PORT and DEMO_PROXY_PORT. Other SLICECACHE_* variables are passed on to
the proxy (its upstream is always the demo origin). Ctrl-C or SIGTERM stops both; if either
child dies, the other is stopped and the exit code is non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

HOST = "127.0.0.1"
STARTUP_SECONDS = 30.0


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback only
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _proxy_argv() -> list[str]:
    script = Path(sys.executable).parent / "slicecache"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.ops.cli"]


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def main() -> int:
    origin_port = int(os.environ.get("DEMO_ORIGIN_PORT", "8081"))
    proxy_port = int(os.environ.get("DEMO_PROXY_PORT", "8080"))
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    env = dict(os.environ)
    env["SLICECACHE_UPSTREAM_ADDRESS"] = f"{HOST}:{origin_port}"
    env["SLICECACHE_HOST"] = HOST
    env["SLICECACHE_PORT"] = str(proxy_port)
    # Ctrl-C on a demo should not wait out a load-balancer drain period.
    env.setdefault("SLICECACHE_DRAIN_SECONDS", "0")
    # Room for the demo's 100 MiB file in memory, so the second fetch is a HIT.
    env.setdefault("SLICECACHE_L1_CACHE_SIZE_BYTES", str(256 * 1024 * 1024))
    # Own sessions: a terminal's Ctrl-C reaches only us, and we stop the children in order.
    origin = subprocess.Popen(
        [sys.executable, "-m", "bench.origin", "--host", HOST, "--port", str(origin_port)],
        start_new_session=True,
    )
    children = [origin]
    try:
        proxy = subprocess.Popen(_proxy_argv(), env=env, start_new_session=True)
        children.append(proxy)
        base = f"http://{HOST}:{proxy_port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _ready(f"{base}/_slicecache/readyz"):
            if stopping:
                return 0
            if any(c.poll() is not None for c in children):
                print("demo: a server exited during startup", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"demo: proxy not ready after {STARTUP_SECONDS:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        if not _ready(f"http://{HOST}:{origin_port}/_origin/stats"):
            print(f"demo: the origin on port {origin_port} does not answer", file=sys.stderr)
            return 1
        fmt = "'%{http_code} %{size_download} bytes %{time_total}s\\n'"
        print(
            f"\nslicecache on {base} -> demo origin on http://{HOST}:{origin_port}\n\n"
            f"  curl -o /dev/null -w {fmt} {base}/files/100m.bin\n"
            f"  curl -s -D - -o /dev/null -H 'Range: bytes=1000000-1999999' "
            f"{base}/files/100m.bin\n"
            f"  slow origin: {base}/files/100m-slow.bin?latency_ms=20&bandwidth_mbps=50\n\n"
            "Ctrl-C stops both.",
            flush=True,
        )
        while not stopping:
            for child, label in ((origin, "origin"), (proxy, "proxy")):
                if child.poll() is not None:
                    print(f"demo: the {label} exited ({child.returncode})", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        _stop(list(reversed(children)))


if __name__ == "__main__":
    sys.exit(main())
