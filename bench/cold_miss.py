"""The two miss-path rows of the peers section alone, in seconds: ``python -m bench.cold_miss``.

"cold 100 MiB (32 MiB with --quick): total time" and "miss-path CPU per GB" for nginx, Varnish
and slicecache, each from a fresh name per round, origin +50 ms first byte and 100 MB/s per
request -- the same ``Bench._peer_cold_big`` the full ``--only peers`` run uses, without the
cached-object cases around it. Prints one JSON line per peer and round, then the medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.run import PEERS, Bench, Config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_miss", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="32 MiB instead of 100 MiB")
    parser.add_argument("--mib", type=int, default=None, help="object size (overrides --quick)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a slicecache setting for this run, as the SLICECACHE_ variable without its "
        "prefix, lower case (e.g. raw_disk_cache__use_direct_io=true); repeatable",
    )
    parser.add_argument(
        "--prefill-mib",
        type=int,
        default=0,
        help="fetch an object this large through each peer first, as the full run does "
        "(its 1 GiB L2 object) before the cold one: the page cache then has to grow into "
        "memory the machine has not touched yet",
    )
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    if args.mib:
        cfg = Config(**{**cfg.__dict__, "peer_cold_mib": args.mib, "peer_big_mib": args.mib})
    out = Path("/tmp/slicecache-cold-miss")
    shutil.rmtree(out, ignore_errors=True)
    bench = Bench(cfg, out, ("peers",), ())
    bench.peer_settings = dict(item.split("=", 1) for item in args.set)
    bench.raw.mkdir(parents=True, exist_ok=True)
    bench.origin = h.start_origin(bench.logs)
    medians: dict[str, dict[str, float]] = {}
    try:
        for which in args.peers.split(","):
            with bench.peer(which) as (server, why):
                if server is None:
                    print(json.dumps({"peer": which, "skipped": why}), flush=True)
                    continue
                if args.prefill_mib:
                    h.fetch_sync(server.url + bench.name(args.prefill_mib), max_time=600)
                rows: list[dict[str, Any]] = []
                for _ in range(args.rounds):
                    row = bench._peer_cold_big(server)
                    rows.append(row)
                    print(json.dumps({"peer": which, **row}), flush=True)
                medians[which] = {
                    key: statistics.median(r[key] for r in rows)
                    for key in ("total_s", "cpu_s_per_gb", "origin_ratio")
                }
    finally:
        bench.origin.stop()
        shutil.rmtree(bench.tmp, ignore_errors=True)
    print(f"cold {cfg.peer_cold_mib} MiB, median of {args.rounds}:")
    for which, m in medians.items():
        print(
            f"  {which:10s} total {m['total_s']:.3f} s  cpu {m['cpu_s_per_gb']:.2f} s/GB"
            f"  origin {m['origin_ratio']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
