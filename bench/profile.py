"""Where a cache hit's time goes: ``python -m bench.profile [--seconds 5] [--top 30]``.

The 4 KiB hit case of the peer figures (issue 16): the demo origin and slicecache started
as the bench starts them (default settings: the access log is on), one cached 4 KiB object,
``wrk -t2 -c64`` on it, and a sampling profile of the proxy meanwhile:

* py-spy (``record``, Python frames only, no ``--native``): a flame graph
  ``profile.svg`` and, from a second recording of collapsed stacks, ``profile-top.txt``
  with the top-N functions by own time and by inclusive time;
* without py-spy (or when ptrace is not allowed): slicecache runs under cProfile instead
  (deterministic, so slower and with more overhead per call), ``profile-top.txt`` from
  pstats.

Files go to ``bench/results/<YYYY-MM-DD>/`` (raw stacks under ``raw/``). The machine is
shared: a profile's proportions are what to read, not its request rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench import harness as h

PY_SPY_INSTALL = "pip install py-spy"


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame(text: str) -> str:
    """``function (file.py:123)`` -> ``function (file.py)``: one entry per function."""
    name, sep, where = text.rpartition(" (")
    if not sep:
        return text
    return f"{name} ({where.rsplit(':', 1)[0].removesuffix(')')})"


def summarize_collapsed(text: str, top: int) -> str:
    """Top functions by own (leaf) samples and by inclusive samples, from collapsed stacks
    (``frame;frame;...;leaf count`` per line, as ``py-spy record --format raw`` writes)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return "no samples\n"
    out = [f"{total} samples", "", f"Top {top} by own time (the frame was executing):"]
    out += [f"{n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    out += ["", f"Top {top} by inclusive time (the frame was on the stack):"]
    out += [f"{n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"


class _BackgroundLoad:
    """wrk in a thread, so that py-spy can record while it runs."""

    def __init__(self, url: str, seconds: float) -> None:
        self.result: h.LoadResult | None = None
        self._thread = threading.Thread(target=self._run, args=(url, seconds), daemon=True)
        self._thread.start()

    def _run(self, url: str, seconds: float) -> None:
        self.result = h.load_small(url, 64, seconds)

    def join(self, timeout: float) -> h.LoadResult | None:
        self._thread.join(timeout)
        return self.result


def _warm(url: str) -> None:
    for _ in range(2):
        f = h.fetch_sync(url)
        if not f.ok:
            raise SystemExit(f"the 4 KiB object did not load through slicecache: {f}")
    h.load_small(url, 64, 1)  # connections, pools and caches warm before sampling


def profile_py_spy(
    spy: str, origin: h.Server, out: Path, logs: Path, seconds: float, top: int
) -> str:
    with h.started(
        h.start_slicecache, origin.url, logs, "slicecache-profile", log_level="info"
    ) as sc:
        url = sc.url + "/files/4k-profile.bin"
        _warm(url)
        # Two recordings under one wrk run: py-spy writes one format per recording.
        load = _BackgroundLoad(url, 2 * seconds + 2)
        time.sleep(0.5)
        common = [spy, "record", "--pid", str(sc.pid), "--duration", f"{seconds:.0f}"]
        common += ["--rate", "200", "--nonblocking"]
        raw = out / "raw" / "profile-collapsed.txt"
        raw.parent.mkdir(parents=True, exist_ok=True)
        svg = out / "profile.svg"
        for fmt, path in (("flamegraph", svg), ("raw", raw)):
            done = subprocess.run(
                [*common, "--format", fmt, "--output", str(path)],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
            )
            if done.returncode != 0 or not path.exists():
                raise RuntimeError(f"py-spy failed: {(done.stderr or done.stdout)[-600:]}")
        result = load.join(seconds + 60)
    rate = f"{result.rps:,.0f} req/s via {result.tool}" if result else "load unknown"
    head = (
        f"slicecache 4 KiB hit, wrk -t2 -c64, {rate} while sampled; py-spy record "
        f"--rate 200 --nonblocking, {seconds:.0f} s, Python frames only\n"
        f"flame graph: {svg.name}\n\n"
    )
    return head + summarize_collapsed(raw.read_text(), top)


def profile_cprofile(origin: h.Server, out: Path, logs: Path, seconds: float, top: int) -> str:
    stats_path = out / "raw" / "profile.cprofile"
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    wrap = ["-m", "cProfile", "-o", str(stats_path)]
    with h.started(
        h.start_slicecache,
        origin.url,
        logs,
        "slicecache-cprofile",
        python_wrap=wrap,
        log_level="info",
    ) as sc:
        url = sc.url + "/files/4k-profile.bin"
        _warm(url)
        load = h.load_small(url, 64, seconds)
    # cProfile writes its file when the process exits (uvicorn stops cleanly on SIGTERM).
    deadline = time.monotonic() + 20
    while not stats_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not stats_path.exists():
        raise RuntimeError("cProfile wrote no statistics (the proxy did not exit cleanly)")
    text = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    head = (
        f"slicecache 4 KiB hit under cProfile (py-spy not used), wrk -t2 -c64, "
        f"{load.rps:,.0f} req/s via {load.tool} (cProfile slows every call)\n\n"
    )
    return head + text.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per recording")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--cprofile", action="store_true", help="skip py-spy")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out: Path = args.out or h.REPO / "bench" / "results" / dt.date.today().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="slicecache-profile-"))
    origin = h.start_origin(logs)
    try:
        spy = None if args.cprofile else py_spy()
        text = ""
        if spy is not None:
            try:
                text = profile_py_spy(spy, origin, out, logs, args.seconds, args.top)
            except (RuntimeError, subprocess.SubprocessError) as err:
                print(f"py-spy did not work ({err}); falling back to cProfile", flush=True)
        elif not args.cprofile:
            print(f"py-spy not installed ({PY_SPY_INSTALL}): cProfile instead", flush=True)
        if not text:
            text = profile_cprofile(origin, out, logs, args.seconds, args.top)
    finally:
        origin.stop()
        shutil.rmtree(logs, ignore_errors=True)
    summary = out / "profile-top.txt"
    summary.write_text(text)
    print(text)
    print(
        f"wrote {summary}"
        + (f" and {out / 'profile.svg'}" if (out / "profile.svg").exists() else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
