"""Child process for the scripted crash tests: run one scenario's writes, then wait to die.

Usage: python -m tests.rawdisk.crash_scenario SCENARIO DEVICE

Prints ``DONE`` once the scenario's writes (and its explicit syncs) have returned, then
keeps the store open with its background tasks running (reaper, maintenance) until the
parent kills it with SIGKILL: the real thing ``RawDiskStore._abandon()`` imitates.
"""

from __future__ import annotations

import asyncio
import sys

from cache.rawdisk import RawDiskStore
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB, payload


async def purge(store: RawDiskStore) -> None:
    for i in range(300):
        assert await store.put_slice(f"http://o/x v {i}", b"d" * 100, None)
        assert await store.put_slice(f"http://o/y v {i}", b"e" * 100, None)
    await store.sync()
    assert await store.delete_prefix("http://o/x") == 300
    await store.sync()


async def journal(store: RawDiskStore) -> None:
    for i in range(20):
        assert await store.put_slice(f"k {i}", payload(f"k {i}", 0, 3000), None)
    assert await store.delete("k 3") == 1
    assert await store.delete_prefix("k 1") == 11
    await store.sync()


async def checkpoint(store: RawDiskStore) -> None:
    for round_ in range(3):
        for i in range(30):
            assert await store.put_slice(f"k {i}", payload(f"k {i}", round_, 2000), None)
        await store.checkpoint()
    for i in range(10):
        await store.delete(f"k {i}")
    await store.sync()


SCENARIOS = {"purge": purge, "journal": journal, "checkpoint": checkpoint}


def settings_for(device: str) -> RawDiskCacheSettings:
    return RawDiskCacheSettings(
        device_path=device, total_size=32 * MiB, block_size=4096, sync_interval=0.05
    )


async def main(scenario: str, device: str) -> None:
    store = await RawDiskStore.open(settings_for(device))
    await SCENARIOS[scenario](store)
    print("DONE", flush=True)
    await asyncio.sleep(3600)  # killed long before this


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
