"""The "cached big object from L2" rows of the peers section alone (issue 17), in seconds.

``python -m bench.l2hits [--mib 256] [--peers slicecache,nginx,varnish] [--clients 1,16,64]
[--window 2] [--profile SECONDS]``: the same cases as ``bench.run --only peers`` (warm the
object once, then a fixed window of N concurrent clients: aggregate MB/s, fairness, proxy CPU
per GB, peak anonymous RSS), without the other rows. ``--cprofile FILE`` runs slicecache under
cProfile (py-spy cannot attach in this container: "Failed to find python version") for the
16-client case only and prints the top functions by own and by cumulative time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pstats
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.run import Bench, Config

MiB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.l2hits")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--peers", default="slicecache,nginx,varnish")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--cprofile", default="")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(Config.make(True), peer_big_mib=args.mib, peer_window_s=args.window)
    out = Path(tempfile.mkdtemp(prefix="l2hits-"))
    bench = Bench(cfg, out, ("peers",), ())
    bench.raw.mkdir(parents=True, exist_ok=True)
    bench.origin = h.start_origin(bench.logs)
    results: dict[str, object] = {}
    if args.cprofile:
        prof = Path(args.cprofile).resolve()
        orig = h.start_slicecache

        def wrapped(upstream: str, log_dir: Path, name: str = "slicecache", **kw: Any) -> h.Server:
            wrap = ("-m", "cProfile", "-o", str(prof))
            return orig(upstream, log_dir, name, wrap, **kw)

        h.start_slicecache = wrapped  # type: ignore[assignment]
        args.peers, args.clients = "slicecache", "16"
    try:
        for which in args.peers.split(","):
            with bench.peer(which) as (server, why):
                if server is None:
                    results[which] = {"skipped": why}
                    continue
                big = bench.name(args.mib)
                warm = h.fetch_sync(server.url + big, max_time=300)
                rows = []
                for n in (int(c) for c in args.clients.split(",")):
                    rows.append(bench._peer_window(server, big, n))
                results[which] = {"warm_ok": warm.ok, "idle_anon": server.rss_anon(), "big": rows}
    finally:
        bench.origin.stop()
    for which, res in results.items():
        if not isinstance(res, dict) or "big" not in res:
            print(which, res)
            continue
        for row in res["big"]:
            print(
                f"{which:10s} {row['clients']:3d} clients: {row['mbps']:8.0f} MB/s  "
                f"fair {row['fairness']:.2f}  cpu {row['cpu_s_per_gb']:.3f} s/GB  "
                f"anon {row['peak_anon_rss'] / MiB:6.0f} MiB  rss {row['peak_rss'] / MiB:6.0f} MiB"
                f"  err {row['errors']}"
            )
    if args.cprofile:
        stats = pstats.Stats(args.cprofile)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumtime").print_stats(25)
    (out / "l2hits.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
