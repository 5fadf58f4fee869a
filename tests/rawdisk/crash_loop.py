"""The L2 crash loop: kill -9 a store under mixed load N times; check each restart.

Usage: python -m tests.rawdisk.crash_loop [--cycles 30] [--seed 1] [--max-run 2.0]

Each cycle starts ``tests.rawdisk.crash_worker`` on the same device (so it recovers
from the previous kill), lets it run a random time, and sends it SIGKILL. Then:

* ``python -m cache.rawdisk verify DEVICE`` (read-only) must exit 0;
* the device is loaded read-only and every indexed record read and checked: not one
  wrong byte;
* every put acknowledged before an explicit sync that completed in the same cycle is
  there (at that version or a later one), unless a delete covering it was issued after;
* no object comes back from an acknowledged delete or purge (a present version must
  have been issued after every acknowledged delete covering its key).

Prints one line per cycle and a summary; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cache.rawdisk import RawDiskStore
from cache.rawdisk.index import FLAG_USED
from tests.rawdisk.conftest import check_payload
from tests.rawdisk.crash_worker import settings_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class History:
    """Every event of every cycle, positions global and increasing."""

    pos: int = 0
    put_issue: dict[int, tuple[int, str]] = field(default_factory=dict)  # v -> (pos, key)
    put_ack: dict[int, int] = field(default_factory=dict)  # v -> pos (commit order)
    # key -> (v, issue pos) of its last put acknowledged before a completed sync
    durable: dict[str, tuple[int, int]] = field(default_factory=dict)
    deletes: list[tuple[int, str, bool]] = field(default_factory=list)  # (pos, prefix, acked)
    wrong_reads: int = 0

    def absorb(self, lines: list[str]) -> None:
        acked: list[tuple[int, int, str]] = []  # (ack pos, v, key) of this cycle
        sync_start: dict[str, int] = {}
        last_covered = -1  # puts acked before this position are durable
        pending_deletes: dict[str, int] = {}
        for line in lines:
            self.pos += 1
            kind, _, rest = line.partition(" ")
            if kind == "p":
                number, key = rest.split(" ", 1)
                self.put_issue[int(number)] = (self.pos, key)
            elif kind == "P":
                number, key = rest.split(" ", 1)
                acked.append((self.pos, int(number), key))
                self.put_ack[int(number)] = self.pos
            elif kind == "d":
                self.deletes.append((self.pos, rest, False))
                pending_deletes[rest] = len(self.deletes) - 1
            elif kind == "D":
                i = pending_deletes.pop(rest)
                pos, prefix, _ = self.deletes[i]
                self.deletes[i] = (pos, prefix, True)
            elif kind == "s":
                sync_start[rest] = self.pos
            elif kind == "S":
                last_covered = max(last_covered, sync_start[rest])
            elif kind == "W":
                self.wrong_reads += 1
        for ack_pos, v, key in acked:  # in ack order: the last one is what the index holds
            if ack_pos < last_covered:
                self.durable[key] = (v, self.put_issue[v][0])

    def older(self, present: int, durable: int) -> bool:
        """Whether version ``present`` was committed before ``durable`` (two writers may
        commit one key's versions out of issue order; a commit the kill kept from being
        acknowledged counts as the latest)."""
        return self.put_ack.get(present, 1 << 62) < self.put_ack[durable]

    def may_be_gone(self, key: str, issued_at: int) -> bool:
        return any(pos > issued_at and key.startswith(p) for pos, p, _ in self.deletes)

    def resurrected(self, key: str, v: int) -> bool:
        issued_at = self.put_issue[v][0]
        return any(
            acked and pos > issued_at and key.startswith(p) for pos, p, acked in self.deletes
        )


def run_cycle(device: str, cycle: int, seed: int, seconds: float) -> list[str]:
    log_path = device + ".worker.log"
    with open(log_path, "wb") as errors:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.rawdisk.crash_worker", device, str(cycle), str(seed)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    assert child.stdout is not None
    first = child.stdout.readline()
    if first.strip() != b"READY":
        child.wait(timeout=30)
        raise SystemExit(f"cycle {cycle}: worker did not start: {_tail(log_path)}")
    time.sleep(seconds)
    os.kill(child.pid, signal.SIGKILL)
    out = child.stdout.read()  # through the same buffered reader as the first line
    child.stdout.close()
    child.wait(timeout=60)
    if child.returncode != -signal.SIGKILL:
        raise SystemExit(f"cycle {cycle}: worker exited {child.returncode}: {_tail(log_path)}")
    text = out.decode(errors="replace")
    if not text.endswith("\n"):  # a line cut by the kill
        text = text[: text.rfind("\n") + 1]
    return text.splitlines()


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        return f.read()[-2000:].decode(errors="replace")


async def check(device: str, history: History) -> tuple[int, int, list[str]]:
    """(entries checked, wrong bytes, failures) of the device as the kill left it."""
    failures: list[str] = []
    store = await asyncio.to_thread(RawDiskStore._inspect, settings_for(device))
    wrong = 0
    present: dict[str, int] = {}
    try:
        index = store._index
        rows = list(index.live_keys_with_rows())
        for raw_key, row in rows:
            if not index.flags_of(row) & FLAG_USED:
                continue
            key = raw_key.decode()
            result = await asyncio.to_thread(store._read_record, index.entry(row), raw_key)
            if not isinstance(result, (bytes, memoryview)):
                failures.append(f"{key}: record does not verify")
                continue
            data = bytes(result)
            if not check_payload(key, data):
                wrong += 1
                failures.append(f"{key}: wrong bytes")
                continue
            v = int(data.split(b"|")[1])
            present[key] = v
            if v not in history.put_issue or history.put_issue[v][1] != key:
                failures.append(f"{key}: version {v} was never written for it")
            elif history.resurrected(key, v):
                failures.append(f"{key}: version {v} came back after a delete was acknowledged")
        for key, (v, issued_at) in history.durable.items():
            if history.may_be_gone(key, issued_at):
                continue
            if key not in present:
                failures.append(f"{key}: version {v} acknowledged and synced, but lost")
            elif history.older(present[key], v):
                failures.append(f"{key}: went back from version {v} to {present[key]}")
        return len(present), wrong, failures
    finally:
        await store._abandon()


def verify_cli(device: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "cache.rawdisk", "verify", device],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout.strip().splitlines()[0] if done.stdout else done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.rawdisk.crash_loop")
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-run", type=float, default=2.0, help="longest run before a kill")
    parser.add_argument("--device", help="device file (default: a temporary one)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="slicecache-crash-") as tmp:
        device = args.device or os.path.join(tmp, "l2.bin")
        history = History()
        total_checked = total_wrong = failed_cycles = 0
        started = time.monotonic()
        for cycle in range(1, args.cycles + 1):
            seconds = rng.uniform(0.05, args.max_run)
            lines = run_cycle(device, cycle, rng.randrange(1 << 30), seconds)
            history.absorb(lines)
            rc, summary = verify_cli(device)
            checked, wrong, failures = asyncio.run(check(device, history))
            if rc != 0:
                failures.append(f"verify exited {rc}: {summary}")
            total_checked += checked
            total_wrong += wrong
            puts = sum(1 for line in lines if line.startswith("P "))
            deletes = sum(1 for line in lines if line.startswith("D "))
            print(
                f"cycle {cycle:3d}: killed after {seconds:.2f} s, {puts} puts, {deletes} "
                f"deletes acknowledged; {checked} entries checked, {wrong} wrong bytes, "
                f"verify: {summary}; {'OK' if not failures else 'FAIL'}",
                flush=True,
            )
            for failure in failures[:10]:
                print(f"    {failure}", flush=True)
            failed_cycles += bool(failures)
        print(
            f"crash loop: {args.cycles} kill -9 cycles in {time.monotonic() - started:.0f} s, "
            f"{total_checked} entries checked, {total_wrong} wrong bytes on disk, "
            f"{history.wrong_reads} wrong bytes read by the worker, "
            f"{len(history.durable)} keys acknowledged durable, {failed_cycles} failed cycles"
        )
        return 1 if failed_cycles or history.wrong_reads else 0


if __name__ == "__main__":
    raise SystemExit(main())
