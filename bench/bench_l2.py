"""L2 (raw disk store) benchmark: throughput, loop lag, allocation, restart, purge.

    python -m bench.bench_l2 [--quick] [--dir DIR] [--json FILE]

Prints one table. Cases:

* ``put``/``get``: 1 MiB slices through the public API with 4 concurrent callers, reads
  from the page cache; p99 event-loop lag from a 1 ms ticker task running throughout.
* ``read path``: the two ways to serve an L2 hit, measured on the same extent:
  ``pread`` copy + xxh3 in a worker thread (what the store does) vs an mmap view with
  madvise(WILLNEED) + xxh3 in a worker thread (zero-copy).
* ``alloc``: a 1 MiB extent on a 100 GiB / 4 KiB geometry (26 M blocks) that is 90 % full
  and fragmented, on the in-memory block map (no 100 GiB file needed).
* ``restart``: open a device whose index holds 1,000,000 entries (synthetic extents,
  realistic 73-byte keys); clean (checkpoint only) and unclean (journal replay): the
  store is abandoned without close, checkpoint or final sync, the on-disk state a
  kill -9 leaves (no process is killed here; tests/rawdisk/test_crash.py kills one).
  Index memory per entry from tracemalloc.
* ``purge``: delete_prefix over all 1,000,000 entries: time until invisible, loop lag.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import mmap
import os
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import xxhash

from cache.rawdisk import RawDiskStore
from cache.rawdisk.allocator import BlockMap
from cache.rawdisk.index import Entry
from cache.rawdisk.layout import extent_blocks, key_hash
from settings import RawDiskCacheSettings

MiB = 1 << 20
GiB = 1 << 30


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class LagProbe:
    """Measures how late a 1 ms sleep wakes up: the event loop's responsiveness."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(max(0.0, time.perf_counter() - before - 0.001))

    def __enter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def p99_ms(self) -> float:
        return pct(self.lags, 0.99) * 1000

    @property
    def max_ms(self) -> float:
        return max(self.lags, default=0.0) * 1000


async def gather_limited(n: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


def slice_key(i: int) -> str:
    """A realistic 73-byte slice key: 100 slices per object."""
    obj = f"http://origin.example.com:8080/videos/file-{i // 100:06d}.mp4"
    return f"{obj} 0123456789abcdef {i % 100}"


# --- put / get ----------------------------------------------------------------------------


async def bench_throughput(directory: str, total_bytes: int, rows: list[dict[str, Any]]) -> None:
    path = os.path.join(directory, "tput.bin")
    settings = RawDiskCacheSettings(
        device_path=path, total_size=total_bytes + total_bytes // 2, block_size=4096
    )
    store = await RawDiskStore.open(settings)
    count = total_bytes // MiB
    blobs = [os.urandom(MiB) for _ in range(8)]
    try:
        with LagProbe() as probe:
            started = time.perf_counter()
            puts: list[Callable[[], Awaitable[bool]]] = [
                partial(store.put_slice, slice_key(i), blobs[i % 8], None) for i in range(count)
            ]
            results = await gather_limited(4, puts)
            elapsed = time.perf_counter() - started
        assert all(results), "puts declined"
        rows.append(
            {
                "case": f"put 1 MiB x {count}",
                "result": f"{count * MiB / elapsed / 1e9:.2f} GB/s",
                "target": ">= 1 GB/s",
                "loop p99 lag": f"{probe.p99_ms:.2f} ms (max {probe.max_ms:.1f})",
            }
        )
        for attempt in range(2):  # second pass: warm page cache and thread pool

            async def get_one(i: int) -> bool:
                # Like a response: look at the bytes, then drop them.
                data = await store.get_slice(slice_key(i))
                return data is not None and len(data) == MiB

            gets: list[Callable[[], Awaitable[bool]]] = [partial(get_one, i) for i in range(count)]
            with LagProbe() as probe:
                started = time.perf_counter()
                got = await gather_limited(4, gets)
                elapsed = time.perf_counter() - started
            assert all(got)
            if attempt == 1:
                rows.append(
                    {
                        "case": f"get 1 MiB x {count} (page cache)",
                        "result": f"{count * MiB / elapsed / 1e9:.2f} GB/s",
                        "target": ">= 2 GB/s",
                        "loop p99 lag": f"{probe.p99_ms:.2f} ms (max {probe.max_ms:.1f})",
                    }
                )
        single = []
        for i in range(min(count, 200)):
            t0 = time.perf_counter()
            await store.get_slice(slice_key(i))
            single.append(time.perf_counter() - t0)
        rows.append(
            {
                "case": "get 1 MiB latency, one caller",
                "result": (
                    f"p50 {pct(single, 0.5) * 1e6:.0f} us, p99 {pct(single, 0.99) * 1e6:.0f} us"
                ),
                "target": "",
                "loop p99 lag": "",
            }
        )
        await bench_read_paths(store, path, rows)
    finally:
        await store.close()
        os.unlink(path)


async def bench_read_paths(store: RawDiskStore, path: str, rows: list[dict[str, Any]]) -> None:
    """pread copy vs mmap view, both verifying xxh3 in a worker thread."""
    index = store._index
    key = slice_key(0).encode()
    entry = index.entry(index.find(key, key_hash(key)))
    offset = store.geometry.block_offset(entry.start)
    length = 64 + len(key) + entry.stored_len
    fd = os.open(path, os.O_RDONLY)
    mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    pool = ThreadPoolExecutor(4)
    loop = asyncio.get_running_loop()
    page = mmap.PAGESIZE

    def via_pread() -> int:
        raw = os.pread(fd, length, offset)
        view = memoryview(raw)[64 + len(key) :]
        return xxhash.xxh3_64_intdigest(view)

    def via_mmap() -> int:
        base = offset - offset % page
        mm.madvise(mmap.MADV_WILLNEED, base, length + offset - base)
        view = memoryview(mm)[offset + 64 + len(key) : offset + length]
        try:
            return xxhash.xxh3_64_intdigest(view)
        finally:
            view.release()

    try:
        for name, fn in (
            ("pread copy + xxh3", via_pread),
            ("mmap view + WILLNEED + xxh3", via_mmap),
        ):
            for _ in range(20):
                await loop.run_in_executor(pool, fn)
            n = 400
            t0 = time.perf_counter()
            await asyncio.gather(*(loop.run_in_executor(pool, fn) for _ in range(n)))
            elapsed = time.perf_counter() - t0
            rows.append(
                {
                    "case": f"read path: {name}",
                    "result": f"{n * entry.stored_len / elapsed / 1e9:.2f} GB/s",
                    "target": "pick faster",
                    "loop p99 lag": "",
                }
            )
    finally:
        pool.shutdown()
        mm.close()
        os.close(fd)


# --- allocation ---------------------------------------------------------------------------


def bench_alloc(rows: list[dict[str, Any]], quick: bool) -> None:
    blocks = 100 * GiB // 4096
    rng = random.Random(7)
    bm = BlockMap(blocks)
    bm.map[:] = b"\x01" * blocks
    bm.free_blocks = 0
    # 10 % free, scattered in runs of 1..300 blocks.
    freed = 0
    while freed < blocks // 10:
        start = rng.randrange(blocks - 300)
        length = rng.choice([1, 2, 3, 5, 8, 16, 32, 64, 128, 300])
        run = bm.map[start : start + length]
        newly = run.count(1)
        bm.map[start : start + length] = bytes(length)
        freed += newly
    bm.free_blocks = bm.map.count(0)
    need = extent_blocks(80, MiB, 4096)
    times = []
    extents: list[int] = []
    for _ in range(2000 if quick else 20000):
        t0 = time.perf_counter_ns()
        start = bm.allocate(need)
        times.append((time.perf_counter_ns() - t0) / 1000)
        if start < 0:
            break
        extents.append(start)
        if len(extents) > 50:  # keep the fill level: free an older extent
            bm.free(extents.pop(rng.randrange(len(extents))), need)
    rows.append(
        {
            "case": "alloc 1 MiB extent, 100 GiB 90% full fragmented",
            "result": (
                f"p50 {pct(times, 0.5):.1f} us, p99 {pct(times, 0.99):.1f} us "
                f"(usage {bm.used_blocks / blocks:.2f})"
            ),
            "target": "p99 <= 100 us",
            "loop p99 lag": "",
        }
    )


# --- restart and purge ----------------------------------------------------------------------


def fill_index(store: RawDiskStore, entries: int) -> None:
    """Insert synthetic entries (one block each) straight into the index and map."""
    index = store._index
    block_map = store._map
    now = int(time.time())
    for i in range(entries):
        kb = slice_key(i).encode()
        start = block_map.allocate(1)
        entry = Entry(
            key_hash=key_hash(kb),
            gen=store._core.tables.next_gen,
            checksum=0,
            start=start,
            nblocks=1,
            stored_len=100,
            orig_len=100,
            expires=0,
            created=now,
            atime=now,
            key_len=len(kb),
            codec=0,
            kind=0,
            freq=0,
            flags=0,
        )
        store._core.tables.next_gen += 1
        index.insert(kb, entry, index.take_row())
    store._persistence.records_since_ckpt += 1  # make close() write a checkpoint


async def bench_restart_and_purge(directory: str, entries: int, rows: list[dict[str, Any]]) -> None:
    path = os.path.join(directory, "restart.bin")
    block = 512
    capacity = entries * 2  # keep the index below the admission watermark
    total = 2 * (capacity * 192 + entries * 2) + entries * block * 2 + 64 * MiB
    total -= total % block
    settings = RawDiskCacheSettings(
        device_path=path, total_size=total, block_size=block, sync_interval=1.0
    )
    store = await RawDiskStore.open(settings, index_capacity=capacity)
    t0 = time.perf_counter()
    fill_index(store, entries)
    fill_seconds = time.perf_counter() - t0
    await store.close()
    try:
        # Clean restart, timed without tracemalloc.
        gc.collect()
        t0 = time.perf_counter()
        store = await RawDiskStore.open(settings)
        clean = time.perf_counter() - t0
        assert store.stats()["entries"] == entries
        # An unclean stop with a journal tail: real puts since the checkpoint, then no
        # close (in-process: what a kill -9 leaves on disk, without killing anything).
        tail = min(20_000, entries // 10)
        payload = b"j" * 200
        for i in range(tail):
            await store.put_slice(f"http://origin.example.com:8080/tail/{i} v 0", payload, None)
        await store.sync()
        await store._abandon()
        gc.collect()
        t0 = time.perf_counter()
        store = await RawDiskStore.open(settings)
        crashed = time.perf_counter() - t0
        replayed = int(store.stats()["replayed_records"])
        await store.close()

        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        store = await RawDiskStore.open(settings)
        traced = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        n = int(store.stats()["entries"])
        map_bytes = len(store._map.map)
        rows.append(
            {
                "case": f"restart, {n:,} entries, clean",
                "result": f"{clean:.2f} s (filled in {fill_seconds:.1f} s)",
                "target": "<= 2 s",
                "loop p99 lag": "",
            }
        )
        rows.append(
            {
                "case": f"restart, unclean (no close), +{replayed:,} journal records",
                "result": f"{crashed:.2f} s",
                "target": "<= 2 s",
                "loop p99 lag": "",
            }
        )
        rows.append(
            {
                "case": "index memory per entry (tracemalloc)",
                "result": (
                    f"{(traced - map_bytes) / n:.0f} B/entry (+ block map "
                    f"{map_bytes / MiB:.1f} MiB = 1 B/block)"
                ),
                "target": "<= 200 B/entry",
                "loop p99 lag": "",
            }
        )
        # Purge everything by prefix: visible at once, reclaimed in the background.
        with LagProbe() as probe:
            t0 = time.perf_counter()
            removed = await store.delete_prefix("http://origin.example.com:8080/videos/")
            visible = time.perf_counter() - t0
            assert await store.get_slice(slice_key(5)) is None
            t1 = time.perf_counter()
            await store._reap_idle()
            reclaimed = time.perf_counter() - t1
        rows.append(
            {
                "case": f"purge {removed:,} entries by prefix",
                "result": (
                    f"invisible after {visible * 1000:.0f} ms; reclaimed in {reclaimed:.1f} s"
                ),
                "target": "< 1 s",
                "loop p99 lag": f"{probe.p99_ms:.2f} ms (max {probe.max_ms:.1f})",
            }
        )
        await store.close()
    finally:
        os.unlink(path)


# --- main ---------------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["case", "result", "target", "loop p99 lag"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = " | ".join(c.ljust(widths[c]) for c in columns)
    print(line)
    print("-+-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(str(row[c]).ljust(widths[c]) for c in columns))


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    directory = str(args.dir)
    total = (512 if args.quick else 2048) * MiB
    await bench_throughput(directory, total, rows)
    bench_alloc(rows, args.quick)
    await bench_restart_and_purge(directory, 200_000 if args.quick else 1_000_000, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 30 s)")
    parser.add_argument("--dir", help="where to create the device files (default /var/tmp)")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    else:
        args.dir = tempfile.mkdtemp(prefix="bench_l2_", dir="/var/tmp")
    started = time.perf_counter()
    rows = asyncio.run(main_async(args))
    print(
        f"bench_l2 ({'quick' if args.quick else 'full'}, {loop_name}, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}, {time.perf_counter() - started:.0f} s)"
    )
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
