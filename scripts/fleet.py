"""N slicecache instances behind HAProxy hashing on the request URI: one machine, many cores.

    python scripts/fleet.py --instances 4 --port 8080 --upstream origin.internal:8081
    make fleet N=4 UPSTREAM=origin.internal:8081

One ``slicecache`` process per instance (one per core by default) on 127.0.0.1:<port+1..N>,
each with its own L2 file if ``--l2-dir`` is given, and HAProxy in front on ``--port`` with
``balance uri whole`` + ``hash-type consistent``: every URL (path and query, as the cache
key) always goes to the same instance, so an object is fetched from the origin and cached
once in the fleet, and each instance's L1 holds a different 1/N of the working set. HAProxy
checks ``readyz`` every second: an instance that dies or drains leaves the ring and only its
~1/N of the keys move (to the instances next on the ring), the others keep hitting. Ctrl-C
or SIGTERM stops everything (the instances drain first).

Needs ``haproxy`` on PATH (``apt-get install haproxy``). Any other ``SLICECACHE_*`` variable
in the environment is passed to every instance.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ADMIN_PREFIX = "/_slicecache"


def haproxy_config(port: int, backends: list[int], host: str = "127.0.0.1") -> str:
    """The whole HAProxy configuration: one frontend, one consistently hashed backend."""
    servers = "\n".join(
        f"    server s{i} 127.0.0.1:{p} check inter 1s fall 2 rise 2"
        for i, p in enumerate(backends, 1)
    )
    return f"""global
    # Each connection costs two descriptors (client and instance); stay within ulimit -n.
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    # Long downloads: a slow client may take minutes; the proxy streams, so no buffering here.
    timeout client 300s
    timeout server 300s
    # Below the instances' SLICECACHE_KEEP_ALIVE_SECONDS (75 s): HAProxy closes idle first.
    timeout http-keep-alive 60s
    option http-keep-alive
    # A connection refused by an instance that just died goes to the next one on the ring
    # (before the health check has taken it out) instead of failing the request.
    retries 2
    option redispatch 1

frontend slicecache
    bind {host}:{port}
    default_backend instances

backend instances
    # The cache key is path + query: hash the whole URI. Consistent hashing: an instance
    # leaving or joining moves only the keys on its part of the ring.
    balance uri whole
    hash-type consistent
    option httpchk GET {ADMIN_PREFIX}/readyz
    http-check expect status 200
{servers}
"""


@dataclass
class Fleet:
    port: int
    backends: list[int]
    instances: list[subprocess.Popen[bytes]] = field(default_factory=list)
    balancer: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def instance_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.backends[index]}"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}{ADMIN_PREFIX}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _wait(condition: Callable[[], bool], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet: {what} within {seconds:.0f} s")
        time.sleep(0.05)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_fleet(
    instances: int,
    upstream: str,
    port: int = 0,
    l2_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
    quiet: bool = True,
) -> Iterator[Fleet]:
    """Start the instances and HAProxy; stop them all on exit."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise RuntimeError("fleet: haproxy is not installed (apt-get install haproxy)")
    fleet = Fleet(port or _free_port(), [_free_port() for _ in range(instances)])
    out = subprocess.DEVNULL if quiet else None
    with tempfile.TemporaryDirectory(prefix="slicecache-fleet-") as tmp:
        try:
            for index, backend in enumerate(fleet.backends):
                env = {**os.environ, **(extra_env or {})}
                env.update(
                    SLICECACHE_UPSTREAM_ADDRESS=upstream,
                    SLICECACHE_HOST="127.0.0.1",
                    SLICECACHE_PORT=str(backend),
                    SLICECACHE_DRAIN_SECONDS=env.get("SLICECACHE_DRAIN_SECONDS", "2"),
                )
                if l2_dir is not None:
                    env["SLICECACHE_ENABLE_L2_CACHE"] = "true"
                    env["SLICECACHE_RAW_DISK_CACHE__DEVICE_PATH"] = str(l2_dir / f"l2-{index}.bin")
                fleet.instances.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "app.ops.cli"], env=env, stdout=out, stderr=out
                    )
                )
            for url in [fleet.instance_url(i) for i in range(instances)]:
                _wait(functools.partial(_ready, url), "instance not ready", 60)
            config = Path(tmp) / "haproxy.cfg"
            config.write_text(haproxy_config(fleet.port, fleet.backends))
            check = subprocess.run([haproxy, "-c", "-q", "-f", str(config)], capture_output=True)
            if check.returncode != 0:
                raise RuntimeError(f"fleet: haproxy config refused: {check.stderr.decode()}")
            fleet.balancer = subprocess.Popen(
                [haproxy, "-W", "-db", "-f", str(config)], stdout=out, stderr=out
            )
            balancer = fleet.balancer
            _wait(lambda: _ready(fleet.url) or balancer.poll() is not None, "haproxy not up", 30)
            if balancer.poll() is not None:
                raise RuntimeError(f"fleet: haproxy exited with {balancer.returncode}")
            yield fleet
        finally:
            if fleet.balancer is not None:
                fleet.balancer.terminate()
            for process in fleet.instances:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.send_signal(signal.SIGTERM)  # a second signal skips the drain
            for process in [*fleet.instances, *([fleet.balancer] if fleet.balancer else [])]:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()


def watch(
    instances: Sequence[subprocess.Popen[bytes]],
    backends: Sequence[int],
    stop: Callable[[], bool],
    interval: float = 0.5,
) -> None:
    """Run until ``stop()`` or until every instance has exited.

    One instance dying is what the recipe is for: HAProxy takes it out and only its ~1/N
    of the keys move, so the fleet keeps serving (the README's promise); each exit is
    reported once instead of tearing the whole fleet down.
    """
    reported: set[int] = set()
    while not stop():
        for index, process in enumerate(instances):
            code = process.poll()
            if code is not None and index not in reported:
                reported.add(index)
                print(
                    f"fleet: instance {index} (port {backends[index]}) exited with {code}; "
                    f"HAProxy sends its keys to the {len(instances) - len(reported)} left",
                    flush=True,
                )
        if len(reported) == len(instances):
            return
        time.sleep(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--port", type=int, default=8080, help="HAProxy's port (the fleet's)")
    parser.add_argument("--upstream", default=os.environ.get("SLICECACHE_UPSTREAM_ADDRESS"))
    parser.add_argument("--l2-dir", type=Path, help="one L2 file per instance in this directory")
    args = parser.parse_args()
    if not args.upstream:
        parser.error("--upstream (or SLICECACHE_UPSTREAM_ADDRESS) names the origin")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    with running_fleet(args.instances, args.upstream, args.port, args.l2_dir, quiet=False) as f:
        print(
            f"fleet: {args.instances} instances on ports {f.backends} behind HAProxy "
            f"(balance uri whole, hash-type consistent) at {f.url}; Ctrl-C stops",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            watch(f.instances, f.backends, lambda: stop["now"])


if __name__ == "__main__":
    main()
