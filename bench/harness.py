"""Benchmark plumbing: servers as subprocesses on free loopback ports, clients, RSS/CPU probes.

Everything here is bounded: every wait has a deadline, every client a ``--max-time``, and
every process started is stopped (SIGTERM, then SIGKILL) by the context that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MiB = 1024 * 1024
MB = 1_000_000  # throughputs are in MB/s (10^6 B/s), the unit of the origin's cap


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), b""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Server:
    """A server subprocess: its base URL, its log file, and probes of its process tree."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log_path: Path
    cleanup_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident bytes of the whole tree (nginx: master + workers)."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def rss_anon(self) -> int:
        """Anonymous resident bytes of the tree (``RssAnon`` in /proc/<pid>/status): heap
        and buffers, without file-backed pages such as Varnish's mmap'd storage or the
        page cache a disk cache reads through."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1]) * 1024
                        break
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the tree so far (robust to other load on the box)."""
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def stop(self, timeout: float = 8.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        if self.cleanup_dir is not None:
            shutil.rmtree(self.cleanup_dir, ignore_errors=True)


def _spawn(
    name: str,
    argv: Sequence[str],
    url: str,
    ready_path: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 20.0,
    cleanup_dir: Path | None = None,
) -> Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=REPO,
            start_new_session=True,  # our Ctrl-C reaches it only through stop()
        )
    server = Server(name, popen, url, log_path, cleanup_dir)
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            server.stop()
            raise StartError(f"{name} exited with {popen.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(OSError):
            status, _ = _get(url + ready_path, timeout=1.0)
            if status < 500:
                # The port answered; make sure it is our child and not someone else's server.
                time.sleep(0.05)
                if server.alive():
                    return server
        if time.monotonic() > deadline:
            server.stop()
            raise StartError(f"{name} not ready in {timeout:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.05)


@contextlib.contextmanager
def started(server_factory: Any, *args: Any, **kwargs: Any) -> Iterator[Server]:
    server: Server = server_factory(*args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def start_origin(log_dir: Path, latency_ms: float = 0.0, bandwidth_mbps: float = 0.0) -> Server:
    port = free_port()
    argv = [PYTHON, "-m", "bench.origin", "--port", str(port)]
    argv += ["--latency-ms", str(latency_ms), "--bandwidth-mbps", str(bandwidth_mbps)]
    return _spawn("origin", argv, f"http://127.0.0.1:{port}", "/_origin/stats", log_dir)


def start_slicecache(
    upstream: str,
    log_dir: Path,
    name: str = "slicecache",
    python_wrap: Sequence[str] = (),
    **settings: Any,
) -> Server:
    """The real console script; ``settings`` become SLICECACHE_<NAME> variables.

    ``python_wrap``: interpreter options before ``-m app.ops.cli`` (e.g. ``-m cProfile -o
    FILE``); the proxy then runs as a module instead of the console script."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLICECACHE_")}
    env["SLICECACHE_UPSTREAM_ADDRESS"] = upstream.removeprefix("http://")
    env["SLICECACHE_PORT"] = str(port)
    env["SLICECACHE_HOST"] = "127.0.0.1"
    env["SLICECACHE_LOG_LEVEL"] = "warning"
    env["SLICECACHE_DRAIN_SECONDS"] = "0"  # no load balancer to tell: stop at once
    for key, value in settings.items():
        env["SLICECACHE_" + key.upper()] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    script = Path(PYTHON).parent / "slicecache"
    if python_wrap:
        argv = [PYTHON, *python_wrap, "-m", "app.ops.cli"]
    else:
        argv = [str(script)] if script.exists() else [PYTHON, "-m", "app.ops.cli"]
    return _spawn(name, argv, f"http://127.0.0.1:{port}", "/_slicecache/readyz", log_dir, env)


def start_simple_proxy(upstream: str, log_dir: Path) -> Server:
    port = free_port()
    argv = [PYTHON, "-m", "bench.simple_proxy", "--port", str(port), "--upstream", upstream]
    return _spawn("simple", argv, f"http://127.0.0.1:{port}", "/_simple/healthz", log_dir)


# --- nginx -------------------------------------------------------------------------------

NGINX_INSTALL = "apt-get install -y nginx-light"
WRK_INSTALL = "apt-get install -y wrk"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _nginx_common(tmp: Path) -> str:
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};"  # workers may write the temp dir
    return f"""
{user}
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
"""


def _nginx_http_common(tmp: Path) -> str:
    return f"""
    access_log off;
    sendfile on; tcp_nopush on;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
"""


def nginx_slice_cache_conf(tmp: Path, port: int, upstream: str) -> str:
    """The peer: nginx's slice module in front of the same origin, cache on disk in tmp."""
    host_port = upstream.removeprefix("http://")
    return f"""{_nginx_common(tmp)}
http {{
{_nginx_http_common(tmp)}
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=bench:16m max_size=8g inactive=1h
                     use_temp_path=off;
    upstream origin {{ server {host_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location = /_nginx/healthz {{ return 200 "ok\\n"; }}
        location / {{
            slice 1m;
            proxy_cache bench;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://origin;
        }}
    }}
}}
"""


def nginx_static_conf(tmp: Path, port: int, root: Path) -> str:
    return f"""{_nginx_common(tmp)}
http {{
{_nginx_http_common(tmp)}
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /_nginx/healthz {{ return 200 "ok\\n"; }}
    }}
}}
"""


def start_nginx(name: str, conf_for: Any, log_dir: Path) -> Server:
    """``conf_for(tmp, port)`` -> nginx.conf text; nginx runs in the foreground from tmp."""
    binary = nginx_binary()
    if binary is None:
        raise StartError(f"nginx not installed: {NGINX_INSTALL}")
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    tmp.chmod(0o755)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(conf_for(tmp, port))
    argv = [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    argv += ["-g", "daemon off;"]
    try:
        return _spawn(
            name, argv, f"http://127.0.0.1:{port}", "/_nginx/healthz", log_dir, cleanup_dir=tmp
        )
    except StartError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StartError(f"{err}\n{_tail(tmp / 'error.log')}") from None


# --- Varnish -----------------------------------------------------------------------------

VARNISH_INSTALL = "apt-get install -y varnish"


def varnish_binary() -> str | None:
    return shutil.which("varnishd") or next(
        (p for p in ("/usr/sbin/varnishd", "/usr/local/sbin/varnishd") if os.access(p, os.X_OK)),
        None,
    )


def varnish_vcl(upstream: str) -> str:
    """The peer: Varnish in front of the same origin, caching what the origin allows.

    Defaults otherwise (the builtin VCL still runs after ours): objects are cached for the
    origin's max-age, Range requests are served from the whole cached object (a miss
    fetches the whole object and streams the asked range), and /_varnish/healthz answers
    without the backend so the harness can wait for readiness.
    """
    host, _, port = upstream.removeprefix("http://").partition(":")
    return f"""vcl 4.1;
backend origin {{
    .host = "{host}";
    .port = "{port or 80}";
    .connect_timeout = 5s;
    .first_byte_timeout = 120s;
    .between_bytes_timeout = 60s;
}}
sub vcl_recv {{
    if (req.url == "/_varnish/healthz") {{ return (synth(200, "ok")); }}
}}
"""


def start_varnish(name: str, upstream: str, log_dir: Path, storage_bytes: int) -> Server:
    """varnishd in the foreground (``-F``), work dir, VCL and file storage all in one temp
    dir (no root paths, no jail: ``-j none``), on a free loopback port; its management
    CLI binds an ephemeral loopback port of its own."""
    binary = varnish_binary()
    if binary is None:
        raise StartError(f"varnish not installed: {VARNISH_INSTALL}")
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    tmp.chmod(0o755)
    port = free_port()
    vcl = tmp / "bench.vcl"
    vcl.write_text(varnish_vcl(upstream))
    storage_mib = max(64, storage_bytes // MiB)
    argv = [binary, "-F", "-n", str(tmp / "work"), "-j", "none"]
    argv += ["-a", f"127.0.0.1:{port}", "-T", "127.0.0.1:0", "-f", str(vcl)]
    argv += ["-s", f"file,{tmp / 'varnish.bin'},{storage_mib}M"]
    try:
        # VCL is compiled with cc at start: allow it a little longer than nginx.
        return _spawn(
            name,
            argv,
            f"http://127.0.0.1:{port}",
            "/_varnish/healthz",
            log_dir,
            timeout=40.0,
            cleanup_dir=tmp,
        )
    except StartError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def varnish_version() -> str | None:
    binary = varnish_binary()
    if binary is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
        text = out.stderr or out.stdout
        m = re.search(r"varnish-([0-9][0-9.]*)", text)
        if m:
            return m.group(1)
        lines = text.strip().splitlines()
        return lines[0] if lines else None
    return None


# --- probes ------------------------------------------------------------------------------


def origin_stats(origin: Server) -> dict[str, int]:
    import json

    _, body = _get(origin.url + "/_origin/stats")
    stats: dict[str, int] = json.loads(body)
    return stats


class RssSampler:
    """Samples a server's RSS every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, server: Server, interval: float = 0.05) -> None:
        self.server = server
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.server.rss()
            self.peak = max(self.peak, rss)
            self.peak_anon = max(self.peak_anon, self.server.rss_anon())
            self.samples.append((time.monotonic() - self._t0, rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.server.rss())


@dataclass
class CpuMeter:
    server: Server
    start: float = 0.0
    seconds: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.start = self.server.cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self.server.cpu_seconds() - self.start


# --- clients -----------------------------------------------------------------------------


@dataclass
class Fetch:
    """One download as the client saw it."""

    status: int
    size: int
    ttfb: float  # seconds to the first response byte
    total: float
    x_cache: str = ""
    error: str = ""
    started: float = 0.0  # monotonic clock at launch (for aggregate wall time)
    ended: float = 0.0
    client: str = ""  # which client measured: "curl" or "aiohttp" (reports say so)

    @property
    def ok(self) -> bool:
        return not self.error and self.status in (200, 206)

    @property
    def mbps(self) -> float:
        return self.size / self.total / MB if self.total > 0 else 0.0


CURL = shutil.which("curl")
CURL_FORMAT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total} %header{x-cache}"


def _header_args(headers: Mapping[str, str] | None) -> list[str]:
    return [arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}: {v}")]


async def _fetch_curl(url: str, max_time: float, headers: Mapping[str, str] | None) -> Fetch:
    assert CURL is not None
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        CURL,
        "-s",
        *_header_args(headers),
        "-o",
        "/dev/null",
        "--max-time",
        f"{max_time:.3f}",  # fractional: timed windows cut a download mid-body
        "-w",
        CURL_FORMAT,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    ended = time.monotonic()
    parts = out.decode(errors="replace").split()
    if len(parts) < 4:
        return Fetch(
            0, 0, 0.0, 0.0, error=f"curl exit {proc.returncode}", started=started, client="curl"
        )
    status, size, ttfb, total = int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])
    error = "" if proc.returncode == 0 else f"curl exit {proc.returncode}"
    xc = parts[4] if len(parts) > 4 else ""
    return Fetch(status, size, ttfb, total, xc, error, started, ended, "curl")


async def _fetch_aiohttp(url: str, max_time: float, headers: Mapping[str, str] | None) -> Fetch:
    import aiohttp

    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=max_time)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            session.get(url, headers=dict(headers or {})) as resp,
        ):
            ttfb = time.monotonic() - started
            size = 0
            while chunk := await resp.content.readany():
                size += len(chunk)
            total = time.monotonic() - started
            xc = resp.headers.get("x-cache", "")
            ended = time.monotonic()
            return Fetch(resp.status, size, ttfb, total, xc, "", started, ended, "aiohttp")
    except (aiohttp.ClientError, TimeoutError) as err:
        return Fetch(0, 0, 0.0, 0.0, error=type(err).__name__, started=started, client="aiohttp")


CLIENTS_USED: set[str] = set()  # which clients measured this process's fetches (reports)


async def fetch(
    url: str, max_time: float = 120.0, headers: Mapping[str, str] | None = None
) -> Fetch:
    """GET ``url`` into nothing: curl when installed (a C client is never the bottleneck)."""
    if CURL is not None:
        result = await _fetch_curl(url, max_time, headers)
    else:
        result = await _fetch_aiohttp(url, max_time, headers)
    CLIENTS_USED.add(result.client)
    return result


async def fetch_many(urls: Sequence[str], max_time: float = 120.0) -> tuple[list[Fetch], float]:
    """All at once; returns the fetches and the wall time from first launch to last byte."""
    t0 = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(fetch(u, max_time) for u in urls)), max_time + 30
    )
    return list(results), time.monotonic() - t0


def fetch_sync(
    url: str, max_time: float = 120.0, headers: Mapping[str, str] | None = None
) -> Fetch:
    return asyncio.run(fetch(url, max_time, headers))


def fetch_many_sync(urls: Sequence[str], max_time: float = 120.0) -> tuple[list[Fetch], float]:
    return asyncio.run(fetch_many(urls, max_time))


# --- wrk ---------------------------------------------------------------------------------


@dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _parse_wrk(text: str) -> tuple[int, int]:
    requests = errors = 0
    for line in text.splitlines():
        words = line.split()
        if "requests in" in line and words and words[0].isdigit():
            requests = int(words[0])
        if line.strip().startswith("Non-2xx") or line.strip().startswith("Socket errors"):
            errors += sum(int(w.rstrip(",")) for w in words if w.rstrip(",").isdigit())
    return requests, errors


def load_small(
    url: str, connections: int, seconds: float, max_requests: int = 2_000_000
) -> LoadResult:
    """Small-request load: wrk when installed, else a bounded aiohttp loop (slower client)."""
    wrk = shutil.which("wrk")
    if wrk is not None:
        argv = [wrk, "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "5s", url]
        t0 = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        elapsed = time.monotonic() - t0
        requests, errors = _parse_wrk(proc.stdout)
        return LoadResult("wrk", requests, elapsed, errors)
    return asyncio.run(_load_aiohttp(url, connections, seconds, max_requests))


async def _load_aiohttp(
    url: str, connections: int, seconds: float, max_requests: int
) -> LoadResult:
    import aiohttp

    done = errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline and done + errors < max_requests:
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status == 200:
                            done += 1
                        else:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - t0
    note = f"wrk not installed ({WRK_INSTALL}): aiohttp client used, it shares the CPU"
    return LoadResult("aiohttp", done, elapsed, errors, [note])


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app", "cache", "settings.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if dirty:
            commit += " (+ uncommitted changes in app/cache)"
    mem = psutil.virtual_memory().total
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{mem / 2**30:.1f} GiB",
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "commit": commit,
        "nginx": nginx_version() or f"not installed ({NGINX_INSTALL})",
        "varnish": varnish_version() or f"not installed ({VARNISH_INSTALL})",
        "wrk": "installed" if shutil.which("wrk") else f"not installed ({WRK_INSTALL})",
        "curl": "installed" if CURL else "not installed (aiohttp client used)",
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def nginx_version() -> str | None:
    binary = nginx_binary()
    if binary is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
        return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")
    return None


# --- timed windows -------------------------------------------------------------------------


@dataclass
class Window:
    """N clients re-downloading one URL until a deadline: what each one received."""

    clients: int
    seconds: float  # the window, first launch to the last client cut off or done
    per_client: list[int]
    completed: int  # whole downloads (the rest were cut by the deadline)
    errors: int  # connections that failed (bad status, no length, closed early)

    @property
    def total(self) -> int:
        return sum(self.per_client)

    @property
    def mbps(self) -> float:
        return self.total / self.seconds / MB if self.seconds else 0.0

    @property
    def fairness(self) -> float:
        """Bytes of the slowest connection / the fastest (1.0 = perfectly even)."""
        most = max(self.per_client, default=0)
        return min(self.per_client) / most if most else float("nan")


def window_load(url: str, clients: int, seconds: float) -> Window:
    """Aggregate throughput and fairness over a fixed window, whatever the object size:
    a slow proxy is measured for as long as a fast one (no run-to-the-end tail). All
    connections open first and start together (:mod:`bench.loadclient`)."""
    from bench import loadclient

    r = loadclient.run(url, clients, seconds)
    return Window(clients, r.seconds, r.per_connection, r.completed, len(r.errors))
