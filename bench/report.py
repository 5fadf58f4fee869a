"""Markdown report and PNG plots from the results dict of :mod:`bench.run`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

MiB = 1024 * 1024
TARGET_NAMES = {
    "a": "(a) proxy CPU per 1 KiB request, wrk -c32, cache off",
    "b": "(b) proxy CPU-s per GiB relayed, 1 GiB, 1 client, cache off",
    "c": "(c) cold 200 MiB, origin 50 MB/s/conn + 20 ms, slice 1 MiB",
    "d": "(d) cold TTFB vs direct origin",
    "e": "(e) warm 200 MiB from L1 (512 MiB) to one client",
    "f": "(f) 32 clients on one cold 200 MiB file",
    "g": "(g) RSS of one 1 GiB download vs one 100 MiB download",
}
COLORS = {
    "direct origin": "#999999",
    "simple proxy": "#d62728",
    "slicecache cold": "#1f77b4",
    "slicecache warm": "#17becf",
    "nginx cold": "#2ca02c",
    "nginx warm": "#98df8a",
    "varnish cold": "#ff7f0e",
    "varnish warm": "#ffbb78",
}


def ms(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    value = seconds * 1000
    return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"


def ms_fine(seconds: float) -> str:
    """Milliseconds to 0.1 ms above 10 ms: "origin + 1 ms" targets need the decimal."""
    if seconds is None or math.isnan(seconds):
        return "n/a"
    value = seconds * 1000
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.{digits}f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _get(d: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(d, dict) and key in d:
            d = d[key]
        elif isinstance(d, list) and isinstance(key, int) and -len(d) <= key < len(d):
            d = d[key]
        else:
            return None
    return d


def _tp(results: dict[str, Any], label: str, clients: int) -> dict[str, Any] | None:
    for row in _get(results, "throughput", label) or []:
        if row["clients"] == clients:
            return dict(row)
    return None


def _offload(results: dict[str, Any], label: str, clients: int) -> dict[str, Any] | None:
    for row in _get(results, "offload", label) or []:
        if row["clients"] == clients:
            return dict(row)
    return None


def targets_table(targets: dict[str, Any]) -> str:
    rows = []
    for key in sorted(targets):
        t = targets[key]
        verdict = "PASS" if t.get("pass") else "FAIL"
        measured = t.get("measured") or t.get("error", "")
        rows.append([TARGET_NAMES.get(key, key), t.get("target", ""), measured, verdict])
    return table(["Issue target", "Target", "Measured", "Result"], rows)


# --- plots ------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_ttfb(results: dict[str, Any], path: Path) -> bool:
    data = results.get("ttfb")
    if not data:
        return False
    labels = [lbl for lbl in COLORS if lbl in data]
    sizes = sorted({int(s) for lbl in labels for s in data[lbl]})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = [j + i * width for j in range(len(sizes))]
        ys = [max(1e-2, (_get(data, label, str(s), "ttfb_p50") or math.nan) * 1000) for s in sizes]
        ax.bar(xs, ys, width, label=label, color=COLORS[label])
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(sizes))])
    ax.set_xticklabels([f"{s} MiB" for s in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("TTFB p50 (ms, log)")
    ax.set_title("Time to first byte, origin 50 MB/s per connection + 20 ms")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return True


def _proxy_color(label: str) -> str:
    """One colour per proxy in every plot."""
    if label.startswith("simple"):
        return "#d62728"
    if label.startswith("nginx"):
        return "#2ca02c"
    if label.startswith("varnish"):
        return "#ff7f0e"
    if "L2" in label:
        return "#9467bd"
    if "L1 0" in label:
        return "#17becf"
    if label.startswith("direct"):
        return "#999999"
    return "#1f77b4"


def plot_memory(results: dict[str, Any], path: Path) -> bool:
    data = results.get("memory")
    if not data:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    variants = list(data)
    phases = [k for k in next(iter(data.values())) if k != "start"]
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        xs = [j + i * width for j in range(len(phases))]
        peaks = [(_get(data, variant, p, "peak") or 0) / MiB for p in phases]
        ax.bar(xs, peaks, width, label=variant, color=_proxy_color(variant))
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(phases))])
    ax.set_xticklabels(phases, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("peak RSS of the proxy (MiB, log)")
    ax.set_title("Proxy memory: peak RSS per workload")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return True


def plot_throughput(results: dict[str, Any], path: Path) -> bool:
    data = results.get("throughput")
    if not data:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.6))
    for label, rows in data.items():
        xs = [r["clients"] for r in rows]
        style = "--" if label.endswith("miss") else "-"
        marker = "x" if label.endswith("miss") else "o"
        kw = {"color": _proxy_color(label), "marker": marker, "label": label}
        ax.plot(xs, [r["mbps"] for r in rows], style, **kw)
        ax2.plot(xs, [max(r["cpu_s_per_gb"], 0.01) for r in rows], style, **kw)
    for a, title, unit in (
        (ax, "Aggregate throughput (higher is better)", "MB/s"),
        (ax2, "Proxy CPU per GB served (lower is better)", "CPU-s/GB"),
    ):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("concurrent clients")
        a.set_ylabel(unit)
        a.set_title(title, fontsize=10)
        a.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_offload(results: dict[str, Any], path: Path) -> bool:
    data = results.get("offload")
    if not data:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(data)
    clients = sorted({r["clients"] for rows in data.values() for r in rows})
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        by_n = {r["clients"]: r["origin_per_file"] for r in data[label]}
        xs = [j + i * width for j in range(len(clients))]
        ys = [by_n.get(n, 0) for n in clients]
        bars = ax.bar(xs, ys, width, label=label, color=_proxy_color(label))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(clients))])
    ax.set_xticklabels([f"{n} clients" for n in clients])
    ax.set_yscale("log")
    ax.set_ylabel("origin bytes / file size (log)")
    ax.set_title("Origin offload, one cold file (1.0 = the origin sent it once)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_rss_f(results: dict[str, Any], path: Path) -> bool:
    samples = _get(results, "targets", "f", "rss_samples")
    if not samples:
        return False
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([s[0] for s in samples], [s[1] / MiB for s in samples])
    ax.axhline(400 * 1e6 / MiB, color="red", linestyle="--", label="400 MB target")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("slicecache RSS, 32 clients on one cold 200 MiB file (50 ms samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


# --- sections ----------------------------------------------------------------------------------


def _headline(r: dict[str, Any]) -> str:
    big = str(max((int(s) for s in _get(r, "ttfb", "simple proxy") or {"0": 0}), default=0))

    def t(label: str, key: str = "ttfb_p50") -> float | None:
        value = _get(r, "ttfb", label, big, key)
        return float(value) if value is not None else None

    def mem(variant: str, phase: str) -> float | None:
        value = _get(r, "memory", variant, phase, "peak")
        return float(value) if value is not None else None

    mem_phases = [k for k in (_get(r, "memory", "simple proxy") or {}) if k.startswith("one ")]
    one_big = mem_phases[0] if mem_phases else "one 1024 MiB"
    rows: list[list[str]] = []

    def row(metric: str, simple: Any, sc: Any, ng: Any, fmt: Any, better: str) -> None:
        rows.append(
            [
                metric,
                fmt(simple) if simple is not None else "n/a",
                fmt(sc) if sc is not None else "n/a",
                fmt(ng) if ng is not None else "n/a",
                ratio(sc, ng) if better else "",
                better,
            ]
        )

    row(
        f"TTFB p50, cold {big} MiB",
        t("simple proxy"),
        t("slicecache cold"),
        t("nginx cold"),
        ms,
        "lower",
    )
    row(f"TTFB p50, warm {big} MiB", None, t("slicecache warm"), t("nginx warm"), ms, "lower")
    row(
        f"Total time p50, cold {big} MiB",
        t("simple proxy", "total_p50"),
        t("slicecache cold", "total_p50"),
        t("nginx cold", "total_p50"),
        ms,
        "lower",
    )
    row(
        f"Peak RSS, {one_big.removeprefix('one ')} file",
        mem("simple proxy", one_big),
        mem("slicecache (L1 100 MiB, default)", one_big),
        mem("nginx (disk cache)", one_big),
        mib,
        "lower",
    )
    row(
        "Peak RSS, 10 concurrent 10 MiB",
        mem("simple proxy", "10 concurrent 10 MiB"),
        mem("slicecache (L1 100 MiB, default)", "10 concurrent 10 MiB"),
        mem("nginx (disk cache)", "10 concurrent 10 MiB"),
        mib,
        "lower",
    )
    clients = max(
        (row_["clients"] for row_ in _get(r, "throughput", "slicecache L1 hit") or []), default=64
    )

    def mbps(label: str, n: int) -> float | None:
        row_ = _tp(r, label, n)
        return row_["mbps"] if row_ else None

    def cpu(label: str, n: int) -> float | None:
        row_ = _tp(r, label, n)
        return row_["cpu_s_per_gb"] if row_ else None

    def fmt_mbps(v: float) -> str:
        return f"{v:,.0f} MB/s"

    def fmt_cpu(v: float) -> str:
        return f"{v:.2f} CPU-s/GB"

    row(
        "Throughput, 1 client, miss",
        mbps("simple proxy miss", 1),
        mbps("slicecache L1 miss", 1),
        mbps("nginx miss", 1),
        fmt_mbps,
        "higher",
    )
    row(
        "Throughput, 10 clients, miss",
        mbps("simple proxy miss", 10),
        mbps("slicecache L1 miss", 10),
        mbps("nginx miss", 10),
        fmt_mbps,
        "higher",
    )
    row(
        f"Throughput, {clients} clients, hit",
        None,
        mbps("slicecache L1 hit", clients),
        mbps("nginx hit", clients),
        fmt_mbps,
        "higher",
    )
    row(
        "Proxy CPU per GB, hit (10 clients)",
        None,
        cpu("slicecache L1 hit", 10),
        cpu("nginx hit", 10),
        fmt_cpu,
        "lower",
    )
    row(
        "Proxy CPU per GB, miss (10 clients)",
        cpu("simple proxy miss", 10),
        cpu("slicecache L1 miss", 10),
        cpu("nginx miss", 10),
        fmt_cpu,
        "lower",
    )
    n_off = max((x["clients"] for x in _get(r, "offload", "slicecache") or []), default=32)

    def off(label: str) -> float | None:
        row_ = _offload(r, label, n_off)
        return row_["origin_per_file"] if row_ else None

    row(
        f"Origin bytes / file size, {n_off} clients cold",
        off("simple proxy"),
        off("slicecache"),
        off("nginx"),
        lambda v: f"{v:.2f}",
        "lower",
    )
    text = table(
        ["Metric", "simple proxy", "slicecache", "nginx", "slicecache/nginx", "better"], rows
    )
    targets = r.get("targets") or {}
    if targets:
        passed = sum(1 for t_ in targets.values() if t_.get("pass"))
        text += f"\n\nIssue targets met: **{passed}/{len(targets)}** (table below)."
    return text


def _ttfb_section(r: dict[str, Any], plots: list[str]) -> str:
    data = r["ttfb"]
    sizes = sorted({int(s) for d in data.values() for s in d})
    rows = []
    for label in [lbl for lbl in COLORS if lbl in data]:
        for s in sizes:
            st = _get(data, label, str(s))
            if st is None:
                continue
            rows.append(
                [
                    label,
                    f"{s} MiB",
                    ms(st["ttfb_avg"]),
                    ms(st["ttfb_p50"]),
                    ms(st["ttfb_p95"]),
                    ms(st["total_p50"]),
                    f"{int(st['ttfb_n'])}"
                    + (f" ({int(st['failed'])} failed)" if st.get("failed") else ""),
                ]
            )
    out = [
        "## 1. Time to first byte",
        "",
        "Origin capped at 50 MB/s per connection with 20 ms first-byte latency (per-request "
        "`?latency_ms=20&bandwidth_mbps=50`). *cold* = a file name never requested before; "
        "*warm* = the same URL again right after. slicecache: 1 MiB slices, lookahead 4, "
        "L1 512 MiB. The simple proxy buffers the whole body and has no cache. TTFB is "
        + _ttfb_meaning(r),
        "",
        table(["Proxy", "Size", "TTFB avg", "TTFB p50", "TTFB p95", "Total p50", "n"], rows),
        "",
    ]
    improvements = []
    for s in sizes:
        a = _get(data, "simple proxy", str(s), "ttfb_p50")
        b = _get(data, "slicecache cold", str(s), "ttfb_p50")
        c = _get(data, "slicecache warm", str(s), "ttfb_p50")
        if a and b:
            improvements.append(
                f"{s} MiB: cold {a / b:,.0f}x faster" + (f", warm {a / c:,.0f}x" if c else "")
            )
    if improvements:
        out += ["slicecache TTFB vs simple proxy (p50): " + "; ".join(improvements) + ".", ""]
    if "ttfb.png" in plots:
        out += ["![TTFB](ttfb.png)", ""]
    return "\n".join(out)


def _client(r: dict[str, Any]) -> str:
    """The client(s) that measured this run's downloads, as the run recorded them."""
    used = r.get("clients_used")
    if used:
        return " and ".join(used)
    # Older results: only whether curl was installed (then it was the client used).
    installed = str(r.get("machine", {}).get("curl", ""))
    if installed.startswith("not installed"):
        return "aiohttp"
    return "curl" if installed else "client not recorded"


def _ttfb_meaning(r: dict[str, Any]) -> str:
    client = _client(r)
    if client == "curl":
        return "curl's `time_starttransfer` (first response byte)."
    if client == "aiohttp":
        return "the aiohttp fallback client's time to the response headers (curl missing)."
    return f"the time to the first response byte as measured by {client}."


def _target_c_bound(target: dict[str, Any]) -> str:
    """The (c) bound, computed from the settings that run used (none recorded: no text)."""
    detail = {int(k): v for k, v in target.get("detail", {}).items()}
    if not detail or any("slice_size" not in d for d in detail.values()):
        return ""
    parts = []
    for lookahead, d in sorted(detail.items()):
        run = d["slices_per_subrequest"] * d["slice_size"]
        parts.append(
            f"{lookahead:.0f} x {run / MiB:g} MiB / ({d['latency_ms']:g} ms + "
            f"{run / (d['cap_mbps'] * 1e6) * 1000:.0f} ms) = {d['bound_mbps']:.0f} MB/s at "
            f"lookahead {lookahead} ({d['bound_mbps'] / d['cap_mbps']:.1f}x the cap)"
        )
    first = detail[min(detail)]
    return (
        "(c) *bound*: each origin request pays the first-byte latency once, then "
        f"transfers its run of `SLICECACHE_SLICES_PER_SUBREQUEST` = "
        f"{first['slices_per_subrequest']:.0f} slices of {first['slice_size'] / MiB:g} MiB at "
        "the cap, and at most *lookahead* requests are in flight: bound = lookahead x "
        "run / (latency + run / cap) = " + "; ".join(parts) + ". With one request per slice "
        "(nginx's slice module, or a run of 1) it would be "
        f"{first['single_slice_bound_mbps']:.0f} MB/s at lookahead {min(detail)}. "
        "All figures from this run's settings."
    )


def _memory_section(r: dict[str, Any], plots: list[str]) -> str:
    data = r["memory"]
    rows = []
    for variant, phases in data.items():
        for phase, m in phases.items():
            if phase == "start":
                continue
            rows.append(
                [
                    variant,
                    phase,
                    mib(m["before"]),
                    mib(m["after"]),
                    mib(m["peak"]),
                    f"{(m['peak'] - phases['start']) / MiB:+.0f} MiB",
                    f"{m['seconds']:.2f} s" + ("" if m["ok"] else " (errors)"),
                ]
            )
    out = [
        "## 2. Memory",
        "",
        "RSS of the proxy process (nginx: master + workers) before and after each workload, "
        "one fresh process per proxy running the three workloads in order, and the peak "
        "sampled every 50 ms. Origin uncapped. slicecache's L1 is a byte-bounded cache, so "
        "its RSS grows up to the L1 budget and stays there; the *L1 0* run shows the "
        "streaming path alone. nginx caches on disk (page cache, not RSS).",
        "",
        table(
            ["Proxy", "Workload", "RSS before", "RSS after", "Peak", "Peak vs idle", "Time"], rows
        ),
        "",
    ]
    if "memory.png" in plots:
        out += ["![Memory](memory.png)", ""]
    return "\n".join(out)


def _throughput_section(r: dict[str, Any], plots: list[str]) -> str:
    data = r["throughput"]
    size = _get(r, "config", "throughput_mib")
    rows = []
    for label, entries in data.items():
        for e in entries:
            rows.append(
                [
                    label,
                    f"{e['clients']} x {e.get('rounds', 1)}",
                    f"{e['mbps']:,.0f}",
                    f"{e['wall']:.2f} s",
                    f"{e['cpu_s_per_gb']:.2f}",
                    mib(e["peak_rss"]),
                    mib(e.get("origin_bytes", 0)),
                    e.get("x_cache") or "-",
                    "" if e["ok"] else "errors",
                ]
            )
    out = [
        "## 3. Throughput",
        "",
        f"All clients download the same {size} MiB file at once ({_client(r)} into nothing), in "
        "rounds, so that every run moves a few hundred MB (CPU times tick in 10 ms). "
        "Aggregate MB/s = bytes received by all clients / wall time. *miss* = a new cold "
        "file each round (the clients share one origin fetch per slice), *hit* = the last of "
        "those files, every round. *Origin sent* = what the origin sent during the run. "
        "Origin uncapped (the demo origin shares the 2 cores). slicecache L1 512 MiB; the L2 "
        "row runs with a 4 MiB L1 so that hits come from the device.",
        "",
        f"L2: {r.get('l2_status', 'not measured')}",
        "",
        table(
            [
                "Proxy / mode",
                "Clients x rounds",
                "MB/s",
                "Wall",
                "CPU-s/GB",
                "Peak RSS",
                "Origin sent",
                "X-Cache",
                "",
            ],
            rows,
        ),
        "",
    ]
    if "throughput.png" in plots:
        out += ["![Throughput](throughput.png)", ""]
    return "\n".join(out)


def _efficiency_section(r: dict[str, Any]) -> str:
    data = r.get("throughput") or {}
    rows = []
    for label, entries in data.items():
        for e in entries:
            rows.append(
                [
                    label,
                    str(e["clients"]),
                    f"{e['cpu_s_per_gb']:.2f}",
                    f"{e['cpu_s']:.2f}",
                    f"{e['bytes'] / 1e9:.2f}",
                ]
            )
    b = _get(r, "targets", "b")
    out = [
        "## 6. Efficiency: proxy CPU seconds per GB served",
        "",
        "CPU time (user + system, from /proc) of the proxy's processes during the throughput "
        "runs above, divided by the bytes its clients received. Unaffected by other load on "
        "the machine, unlike wall times.",
        "",
        table(["Proxy / mode", "Clients", "CPU-s/GB", "CPU-s", "GB served"], rows),
        "",
    ]
    if b and "value" in b:
        out += [f"Pass-through relay (cache off, 1 GiB, 1 client): {b['measured']}.", ""]
    return "\n".join(out)


def _cachewrite_section(r: dict[str, Any]) -> str:
    data = r["cachewrite"]
    out = [
        "## 4. Cache write (L2)",
        "",
        f"L2 status: {data.get('l2_status', 'not measured')}",
        "",
        "Per object size: a cold fetch from the uncapped origin (the slices are written to "
        "L1 and, with L2 on, queued to the device), a re-read after 8 MiB of other objects "
        "churned the 4 MiB L1 (an L2 hit when L2 is on), and a cold fetch from the capped "
        "origin (TTFB and MB/s with L2 on vs off). Medians.",
        "",
    ]
    rows = []
    for variant in ("L2 off", "L2 on"):
        sizes = data.get(variant)
        if not isinstance(sizes, dict):
            continue
        if "skipped" in sizes:
            rows.append([variant, "-", "skipped", "", "", "", "", "", ""])
            continue
        for s, m in sizes.items():
            rows.append(
                [
                    variant,
                    f"{s} MiB",
                    ms(m["cold_s"]),
                    f"{m['cold_mbps']:,.0f}",
                    ms(m["reread_s"]),
                    f"{m['reread_mbps']:,.0f} ({m['reread_x_cache']})",
                    mib(m.get("reread_origin_bytes", 0)),
                    ms(m["capped_ttfb"]),
                    f"{m['capped_mbps']:.0f}",
                ]
            )
    out.append(
        table(
            [
                "Variant",
                "Object",
                "Cold fetch",
                "Cold MB/s",
                "Re-read",
                "Re-read MB/s (X-Cache)",
                "Re-read origin",
                "Capped TTFB",
                "Capped MB/s",
            ],
            rows,
        )
    )
    on, off = data.get("L2 on"), data.get("L2 off")
    if isinstance(on, dict) and isinstance(off, dict) and "skipped" not in on:
        ratios = [
            f"{s} MiB TTFB on/off {ratio(on[s]['capped_ttfb'], off[s]['capped_ttfb'])}"
            for s in on
            if s in off
        ]
        out += ["", "L2 on vs off: " + "; ".join(ratios) + "."]
    out.append("")
    return "\n".join(out)


def _offload_section(r: dict[str, Any], plots: list[str]) -> str:
    data = r["offload"]
    size = _get(r, "config", "offload_mib")
    rows = []
    for label, entries in data.items():
        for e in entries:
            rows.append(
                [
                    label,
                    str(e["clients"]),
                    f"{e['origin_bytes'] / MiB:,.0f} MiB",
                    f"{e['origin_per_client_byte']:.3f}",
                    f"{e['origin_per_file']:.2f}",
                    f"{e['wall']:.2f} s" + ("" if e["ok"] else " (errors)"),
                ]
            )
    out = [
        "## 5. Origin offload",
        "",
        f"N clients start the same cold {size} MiB file at once; origin 50 MB/s per "
        "connection + 20 ms. Origin bytes from `GET /_origin/stats`.",
        "",
        table(
            [
                "Proxy",
                "Clients",
                "Origin sent",
                "Origin B per client B",
                "Origin B / file size",
                "Wall",
            ],
            rows,
        ),
        "",
    ]
    if "offload.png" in plots:
        out += ["![Offload](offload.png)", ""]
    return "\n".join(out)


def _peers_section(r: dict[str, Any]) -> str:
    notes = [n for n in r.get("notes", []) if "nginx" in n or "varnish" in n]
    out = ["## 7. Peers in the same run", ""]
    version = _get(r, "machine", "nginx")
    if _get(r, "throughput", "nginx hit") or _get(r, "ttfb", "nginx cold"):
        out += [
            f"nginx {version}, 2 workers, `slice 1m; proxy_cache` on disk in a temp dir, "
            "`proxy_cache_key $uri$is_args$args$slice_range; proxy_set_header Range "
            "$slice_range; proxy_cache_valid 200 206 1h; proxy_cache_lock on;`, keepalive "
            "to the origin. Ratios slicecache/nginx from the tables above (same run, same "
            "origin):",
            "",
        ]
        rows: list[list[str]] = []
        for s in sorted({int(x) for x in (_get(r, "ttfb", "nginx cold") or {})}):
            for kind in ("cold", "warm"):
                a = _get(r, "ttfb", f"slicecache {kind}", str(s), "ttfb_p50")
                b = _get(r, "ttfb", f"nginx {kind}", str(s), "ttfb_p50")
                rows.append([f"TTFB p50 {kind} {s} MiB", ms(a), ms(b), ratio(a, b), "lower"])
            a = _get(r, "ttfb", "slicecache cold", str(s), "total_p50")
            b = _get(r, "ttfb", "nginx cold", str(s), "total_p50")
            rows.append([f"Download time cold {s} MiB", ms(a), ms(b), ratio(a, b), "lower"])
        for mode in ("miss", "hit"):
            for e in _get(r, "throughput", f"slicecache L1 {mode}") or []:
                n = _tp(r, f"nginx {mode}", e["clients"])
                if n:
                    rows.append(
                        [
                            f"Throughput {mode}, {e['clients']} clients",
                            f"{e['mbps']:,.0f} MB/s",
                            f"{n['mbps']:,.0f} MB/s",
                            ratio(e["mbps"], n["mbps"]),
                            "higher",
                        ]
                    )
                    rows.append(
                        [
                            f"CPU-s/GB {mode}, {e['clients']} clients",
                            f"{e['cpu_s_per_gb']:.2f}",
                            f"{n['cpu_s_per_gb']:.2f}",
                            ratio(e["cpu_s_per_gb"], n["cpu_s_per_gb"]),
                            "lower",
                        ]
                    )
        for e in _get(r, "offload", "slicecache") or []:
            n = _offload(r, "nginx", e["clients"])
            if n:
                a, b = e["origin_per_file"], n["origin_per_file"]
                rows.append(
                    [
                        f"Origin B / file, {e['clients']} clients",
                        f"{a:.2f}",
                        f"{b:.2f}",
                        ratio(a, b),
                        "lower",
                    ]
                )
        sc_mem = _get(r, "memory", "slicecache (L1 100 MiB, default)") or {}
        ng_mem = _get(r, "memory", "nginx (disk cache)") or {}
        for phase in sc_mem:
            if phase != "start" and phase in ng_mem:
                a, b = sc_mem[phase]["peak"], ng_mem[phase]["peak"]
                rows.append([f"Peak RSS, {phase}", mib(a), mib(b), ratio(a, b), "lower"])
        out += [table(["Metric", "slicecache", "nginx", "slicecache/nginx", "better"], rows), ""]
    out += [f"- {n}" for n in notes]
    out.append("")
    return "\n".join(out)


PEER_COLUMNS = (("nginx", "nginx slice"), ("varnish", "Varnish"), ("slicecache", "slicecache"))


def _window_row(r: dict[str, Any], which: str, key: str, clients: int) -> dict[str, Any] | None:
    for row in _get(r, "peers", which, key) or []:
        if row.get("clients") == clients:
            return dict(row)
    return None


def peer_figures(r: dict[str, Any]) -> list[tuple[str, dict[str, float | None], Any, str]]:
    """(figure, value per peer, formatter, better) for the rows of issues 16 and 17."""
    cfg = _get(r, "peers", "config") or {}
    big = cfg.get("big_mib", 1024)
    big_label = "1 GiB" if big == 1024 else f"{big} MiB"
    cold = cfg.get("cold_mib", 100)
    origin_ttfb = _get(r, "peers", "origin", "cold_ttfb", "ttfb_p50")
    clients = sorted(
        {row["clients"] for w, _ in PEER_COLUMNS for row in _get(r, "peers", w, "big") or []}
    )
    most = max(clients, default=64)

    def each(*path: Any) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for which, _ in PEER_COLUMNS:
            value = _get(r, "peers", which, *path)
            out[which] = float(value) if isinstance(value, (int, float)) else None
        return out

    def window(key: str, n: int, field: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for which, _ in PEER_COLUMNS:
            row = _window_row(r, which, key, n)
            out[which] = float(row[field]) if row and row.get(field) is not None else None
        return out

    def num(fmt: str) -> Any:
        return lambda v: fmt.format(v)

    rows: list[tuple[str, dict[str, float | None], Any, str]] = [
        (
            "4 KiB cached object, `wrk -t2 -c64`: req/s",
            each("hit4k", "rps"),
            num("{:,.0f}"),
            "higher",
        ),
        (
            "proxy CPU per 1,000 such requests",
            each("hit4k", "cpu_ms_per_1000"),
            num("{:.1f} ms"),
            "lower",
        ),
        (
            "`Range: bytes=50000000-50999999` on a cached 100 MiB object: total p50",
            each("range", "total_p50"),
            ms_fine,
            "lower",
        ),
        ("same, time to first byte p50", each("range", "ttfb_p50"), ms_fine, "lower"),
        (
            f"cold GET, time to first byte p50 (origin +50 ms; origin alone: "
            f"{ms_fine(origin_ttfb) if origin_ttfb else 'n/a'})",
            each("cold_ttfb", "ttfb_p50"),
            ms_fine,
            "lower",
        ),
    ]
    for n in clients:
        what = "MB/s" if n == 1 else "aggregate MB/s"
        rows.append(
            (
                f"cached {big_label} (slicecache: from L2), {n} client{'s' if n > 1 else ''}: "
                f"{what}",
                window("big", n, "mbps"),
                num("{:,.0f}"),
                "higher",
            )
        )
    rows += [
        (
            f"fairness, {most} clients: bytes of the slowest connection / the fastest",
            window("big", most, "fairness"),
            num("{:.2f}"),
            "higher",
        ),
        (
            f"proxy CPU per GB served, {most} x {big_label}",
            window("big", most, "cpu_s_per_gb"),
            num("{:.2f} s"),
            "lower",
        ),
        (
            f"anonymous RSS (peak), {most} x {big_label}",
            window("big", most, "peak_anon_rss"),
            mib,
            "lower",
        ),
        (
            f"cold {cold} MiB, 1 client (origin +50 ms, 100 MB/s per request): total time",
            each("cold_big", "total_s"),
            num("{:.2f} s"),
            "lower",
        ),
        (
            f"proxy CPU per GB on the miss path (cold {cold} MiB)",
            each("cold_big", "cpu_s_per_gb"),
            num("{:.2f} s"),
            "lower",
        ),
        (
            f"origin bytes / object size (cold {cold} MiB)",
            each("cold_big", "origin_ratio"),
            num("{:.2f}x"),
            "lower",
        ),
        (
            f"cached 100 MiB, {most} clients: aggregate MB/s",
            window("mid", most, "mbps"),
            num("{:,.0f}"),
            "higher",
        ),
    ]
    return rows


def peer_table(r: dict[str, Any]) -> str:
    rows = []
    for figure, values, fmt, better in peer_figures(r):
        cells = [fmt(values[w]) if values[w] is not None else "n/a" for w, _ in PEER_COLUMNS]
        ng = values["nginx"]
        rows.append(
            [figure, *cells, ratio(values["varnish"], ng), ratio(values["slicecache"], ng), better]
        )
    header = ["figure", *(label for _, label in PEER_COLUMNS)]
    header += ["Varnish/nginx", "slicecache/nginx", "better"]
    return table(header, rows)


def plot_peers(results: dict[str, Any], path: Path) -> bool:
    """Every figure as a ratio to nginx (log scale; 1.0 = nginx), Varnish and slicecache."""
    if not results.get("peers"):
        return False
    figures = [f for f in peer_figures(results) if f[1]["nginx"]]
    if not figures:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(figures) + 1.5))
    colors = {"varnish": "#ff7f0e", "slicecache": "#1f77b4"}
    for i, which in enumerate(("varnish", "slicecache")):
        ys = [j + i * 0.4 for j in range(len(figures))]
        xs = []
        for _, values, _, _ in figures:
            v, ng = values[which], values["nginx"]
            xs.append(v / ng if v is not None and ng and not math.isnan(v / ng) else math.nan)
        ax.barh(ys, xs, 0.4, label=which, color=colors[which])
    ax.axvline(1.0, color="#2ca02c", linestyle="--", label="nginx = 1")
    labels = [f"{f[0].replace('`', '')[:58]} ({f[3]})" for f in figures]
    ax.set_yticks([j + 0.2 for j in range(len(figures))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio to nginx (log)")
    ax.set_title("Issues 16 and 17: each figure as a ratio to nginx, same run", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return True


def _peer_figures_section(r: dict[str, Any], plots: list[str]) -> str:
    peers = r["peers"]
    cfg = peers.get("config", {})
    out = [
        "## 9. nginx, Varnish and slicecache: the hot-path and bytes-path figures",
        "",
        "The rows of issues 16 and 17, measured here in one invocation against the same "
        "origin. nginx `slice 1m` + `proxy_cache`; Varnish "
        f"{_get(r, 'machine', 'varnish') or ''} with file storage; slicecache with default "
        "settings (access log on) plus an L2 device, so objects above the 100 MiB L1 come "
        f"from L2. Each figure is the median of {cfg.get('rounds', 1)} round(s), the peers "
        "taking turns, each started afresh for each round (`rounds` in the raw JSON holds "
        f"every round). Windows of {cfg.get('window_s', '?')} s: N keep-alive connections start "
        "together and re-download the object until the deadline (`bench/loadclient.py`); "
        f"`wrk` runs {cfg.get('wrk_seconds', '?')} s. Proxy CPU is utime + stime of the "
        "proxy's processes from /proc; anonymous RSS is `RssAnon` (Varnish's storage is "
        "file-backed, so it is not in it). The load client shares the 2 cores: compare "
        "ratios within this run, not figures across runs.",
        "",
        peer_table(r),
        "",
    ]
    for which, label in PEER_COLUMNS:
        entry = peers.get(which) or {}
        if entry.get("skipped"):
            out.append(f"- {label}: skipped ({entry['skipped']})")
        elif entry.get("note"):
            out.append(f"- {label}: {entry['note']}")
        for row in entry.get("big", []) + entry.get("mid", []):
            if row.get("starved"):
                out.append(
                    f"- {label}: {row['starved']} of {row['clients']} connections received no "
                    f"byte in the {cfg.get('window_s', '?')} s window"
                )
        cached = [row.get("origin_bytes", 0) for row in entry.get("big", [])]
        if any(cached):
            out.append(f"- {label}: the origin sent {mib(sum(cached))} during the cached runs")
    out.append("")
    if "peers.png" in plots:
        out += ["![Ratios to nginx](peers.png)", ""]
    return "\n".join(out)


def write(results: dict[str, Any], out_dir: Path, stem: str = "report") -> Path:
    plots: list[str] = []
    full = stem == "report"
    prefix = "" if full else stem + "-"
    for name, fn in (
        ("ttfb.png", plot_ttfb),
        ("memory.png", plot_memory),
        ("throughput.png", plot_throughput),
        ("offload.png", plot_offload),
        ("rss_32_clients.png", plot_rss_f),
        ("peers.png", plot_peers),
    ):
        try:
            if fn(results, out_dir / (prefix + name)):
                plots.append(name)
        except Exception as err:  # a plot must never lose the report
            results.setdefault("notes", []).append(f"plot {name} failed: {err}")
    m = results["machine"]
    lines = [
        "# slicecache benchmark report",
        "",
        f"- Date: {m['date']} ({m['mode']} mode, {results['elapsed_s']:.0f} s)",
        f"- Machine: {m['cores']} cores, {m['cpu']}, {m['memory']} RAM; "
        f"load average {m['loadavg']} at start, {m.get('loadavg_end', '?')} at end "
        "(a shared, noisy box: compare ratios within this run and CPU seconds, not wall "
        "times across runs)",
        f"- Python {m['python']}; git commit {m['commit']}",
        f"- Tools: curl {m['curl']}; wrk {m['wrk']}; nginx {m['nginx']}; "
        f"Varnish {m.get('varnish', 'not recorded')}",
        "- Units: MiB = 2^20 B (file sizes), MB/s = 10^6 B/s (throughput, and the origin's cap)",
        "- Reproduce: `make bench` (quick) or `make bench-full`; one table: "
        "`python -m bench.run --only targets [--targets a,c]`",
        "",
    ]
    if results.get("errors"):
        lines += ["**Sections that failed** (traceback in raw/):", ""]
        lines += [f"- {k}: {v}" for k, v in results["errors"].items()] + [""]
    sections = results.get("sections", [])
    if full:
        lines += ["## Headline", "", _headline(results), ""]
    link = (lambda p: p) if full else (lambda p: prefix + p)
    fixed_plots = [link(p) for p in plots]
    body = []
    if "ttfb" in results:
        body.append(_ttfb_section(results, plots))
    if "memory" in results:
        body.append(_memory_section(results, plots))
    if "throughput" in results:
        body.append(_throughput_section(results, plots))
    if "cachewrite" in results:
        body.append(_cachewrite_section(results))
    if "offload" in results:
        body.append(_offload_section(results, plots))
    if "throughput" in results:
        body.append(_efficiency_section(results))
    if full or "ttfb" in sections or "throughput" in sections:
        body.append(_peers_section(results))
    if results.get("peers"):
        body.append(_peer_figures_section(results, plots))
    if results.get("targets"):
        t = ["## 8. Issue targets", "", targets_table(results["targets"]), ""]
        if "c" in results["targets"]:
            bound = _target_c_bound(results["targets"]["c"])
            if bound:
                t += [bound, ""]
        if "rss_32_clients.png" in plots:
            t += ["![RSS, 32 clients](rss_32_clients.png)", ""]
        body.append("\n".join(t))
    text = "\n".join(lines + body)
    for original, linked in zip(plots, fixed_plots, strict=True):
        text = text.replace(f"({original})", f"({linked})")
    other = [n for n in results.get("notes", []) if "nginx" not in n and "varnish" not in n]
    if other:
        text += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in other) + "\n"
    path = out_dir / f"{stem}.md"
    path.write_text(text)
    return path
