"""kill -9 a writer at random moments, many times; every reopen must be consistent."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache.rawdisk import RawDiskStore
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB, check_consistent, check_payload, payload

ROOT = Path(__file__).resolve().parents[2]
KILLS = 12


def _run_and_kill(device: str, run: int, seed: int, delay: float) -> dict[str, int]:
    """Start the writer, kill -9 it after ``delay`` s of writing; its last SYNCED versions.

    The delay only picks a moment to kill at (any moment must be survivable): it decides
    nothing about the outcome.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.rawdisk.crash_writer", device, str(run), str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    first = child.stdout.readline()
    assert first.strip() == "READY", child.stderr.read() if child.stderr else first
    time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err
    synced = [line for line in out.splitlines() if line.startswith("SYNCED ")]
    if not synced:
        return {}
    body = synced[-1][len("SYNCED ") :]
    pairs = (item.rsplit("@", 1) for item in body.split(",")) if body else ()
    return {key: int(version) for key, version in pairs}


def _version(data: bytes) -> int:
    return int(bytes(data).split(b"|")[1])


async def _verify(settings: RawDiskCacheSettings, run: int, durable: dict[str, int]) -> int:
    """Check the reopened device; return how many synced keys were verified."""
    store = await RawDiskStore.open(settings)
    try:
        keys = list(store.keys())
        served = 0
        for key in keys:
            got = await store.get_slice(key)
            if got is not None:
                assert check_payload(key, bytes(got)), f"run {run}: {key} has wrong bytes"
                served += 1
        # Every listed key is readable: the index never names a torn or lost extent.
        assert served == len(keys), f"run {run}: {len(keys) - served} listed keys unreadable"
        missing = [key for key in durable if key not in keys]
        assert not missing, f"run {run}: synced keys lost: {missing[:5]}"
        for key, version in durable.items():
            got = await store.get_slice(key)
            assert got is not None, f"run {run}: synced {key} not served"
            # A later (unsynced) overwrite may have landed too; an older version may not.
            assert _version(bytes(got)) >= version, f"run {run}: {key} rolled back"
        await store._drain()
        check_consistent(store)
        # Still writable, and the write reads back.
        key = f"parent {run}"
        for _ in range(2):  # asked for twice, so admitted even when the device is full
            await store.get_slice(key)
        assert await store.put_slice(key, payload(key, 0, 5000), None), store.stats()
        assert bytes(await store.get_slice(key) or b"") == payload(key, 0, 5000)
        # Keep the device from filling up across runs.
        if run >= 2:
            await store.delete_prefix(f"r{run - 2}")
    finally:
        await store.close()
    return len(durable)


def test_kill_minus_nine_many_times(tmp_path: Path) -> None:
    device = str(tmp_path / "crash.bin")
    settings = RawDiskCacheSettings(
        device_path=device, total_size=32 * MiB, block_size=4096, sync_interval=0.02
    )
    rng = random.Random(1234)
    verified = 0
    for run in range(KILLS):
        durable = _run_and_kill(device, run, rng.randrange(1 << 30), rng.uniform(0.05, 0.6))
        verified += asyncio.run(_verify(settings, run, durable))
    # Kills landed after syncs often enough that durability was really checked.
    assert verified > 0


# --- scripted scenarios, killed for real ------------------------------------------------------
# The same scenarios as the in-process ``_crash()`` tests of test_store.py, but the writer is
# a real process killed with SIGKILL while its background tasks run.


def _run_scenario_and_kill(scenario: str, device: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.rawdisk.crash_scenario", scenario, device],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # blocks until the scenario's writes have returned
    if line.strip() != "DONE":
        child.kill()
        raise AssertionError(child.communicate(timeout=30)[1])
    os.kill(child.pid, signal.SIGKILL)
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err


async def _check_scenario(scenario: str, device: str) -> None:
    from tests.rawdisk.crash_scenario import settings_for

    store = await RawDiskStore.open(settings_for(device))
    try:
        if scenario == "purge":
            assert await store.get_slice("http://o/x v 5") is None
            assert await store.get_slice("http://o/y v 5") == b"e" * 100
            assert store.stats()["entries"] == 300
        elif scenario == "journal":
            expected = [f"k {i}" for i in range(20) if i != 3 and not str(i).startswith("1")]
            assert sorted(store.keys()) == sorted(expected)
            for key in expected:
                assert bytes(await store.get_slice(key) or b"") == payload(key, 0, 3000)
        else:
            assert len(list(store.keys())) == 20
            for i in range(10, 30):
                got = await store.get_slice(f"k {i}")
                assert got is not None and bytes(got) == payload(f"k {i}", 2, 2000)
        await store._drain()
        check_consistent(store)
    finally:
        await store.close()


@pytest.mark.parametrize("scenario", ["purge", "journal", "checkpoint"])
def test_scenario_survives_a_real_kill_minus_nine(scenario: str, tmp_path: Path) -> None:
    device = str(tmp_path / "scenario.bin")
    _run_scenario_and_kill(scenario, device)
    asyncio.run(_check_scenario(scenario, device))
