"""Bench: N slicecache instances behind HAProxy (scripts/fleet.py), N = 1 .. cores.

For each N: a fresh fleet in front of the demo origin, ``OBJECTS`` files fetched once
through HAProxy (all misses), then ``CLIENTS`` concurrent curl clients fetch them again and
again for ``SECONDS`` (all hits). Reports the aggregate hit throughput per N, and the
origin's bytes / the objects' bytes (1.00 = each object fetched from the origin once
across the whole fleet).

    python -m bench.fleet [--quick] [--max-instances N]

The instances share the machine's cores with HAProxy and the curl clients, so throughput
grows with N only while cores are free: on 2 cores expect N=2 to beat N=1 by less than 2x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import origin_stats, start_origin, started
from scripts.fleet import running_fleet

MiB = 1024 * 1024


def fetch_loop(url: str, paths: list[str], until: float) -> int:
    """curl the paths round-robin until ``until``; bytes received."""
    total = 0
    i = 0
    while time.monotonic() < until:
        out = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{http_code}",
                url + paths[i],
            ],
            capture_output=True,
            text=True,
        )
        size, code = out.stdout.split()
        if code == "200":
            total += int(size)
        i = (i + 1) % len(paths)
    return total


def run(max_instances: int, objects: int, size_mib: int, clients: int, seconds: float) -> None:
    paths = [f"/files/{size_mib}m-fleet-{i}.bin" for i in range(objects)]
    with tempfile.TemporaryDirectory() as tmp, started(start_origin, Path(tmp)) as origin:
        upstream = origin.url.removeprefix("http://")
        rows = []
        for n in range(1, max_instances + 1):
            before = origin_stats(origin)["bytes_sent"]
            env = {"SLICECACHE_L1_CACHE_SIZE_BYTES": str(objects * size_mib * MiB * 2)}
            with running_fleet(n, upstream, extra_env=env) as fleet:
                for path in paths:  # the misses: each object through the fleet once
                    subprocess.run(["curl", "-s", "-o", "/dev/null", fleet.url + path], check=True)
                fetched = origin_stats(origin)["bytes_sent"] - before
                until = time.monotonic() + seconds
                started_at = time.monotonic()
                with ThreadPoolExecutor(clients) as pool:
                    sizes = list(
                        pool.map(
                            fetch_loop, [fleet.url] * clients, [paths] * clients, [until] * clients
                        )
                    )
                elapsed = time.monotonic() - started_at
                refetched = origin_stats(origin)["bytes_sent"] - before - fetched
            mbps = sum(sizes) / elapsed / 1e6
            ratio = fetched / (objects * size_mib * MiB)
            rows.append((n, mbps, ratio, refetched))
            print(
                f"fleet N={n}: hit throughput {mbps:,.0f} MB/s with {clients} curl clients; "
                f"origin bytes / object bytes {ratio:.2f} (misses), {refetched} B during hits",
                flush=True,
            )
        base = rows[0][1]
        for n, mbps, _, _ in rows[1:]:
            print(f"fleet: N={n} / N=1 hit throughput = {mbps / base:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-instances", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.quick:
        run(args.max_instances, objects=8, size_mib=4, clients=8, seconds=8)
    else:
        run(args.max_instances, objects=32, size_mib=16, clients=16, seconds=30)


if __name__ == "__main__":
    main()
