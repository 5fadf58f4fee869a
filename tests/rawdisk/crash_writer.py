"""Child process for the crash tests: writes, overwrites and deletes until killed.

Usage: python -m tests.rawdisk.crash_writer DEVICE RUN SEED

After each explicit sync it prints ``SYNCED <key>@<version>,...``: keys whose latest put
(and no later delete) is covered by that sync, with that put's version, which must
therefore survive a kill -9: the key reads back at that version or a later one.
"""

from __future__ import annotations

import asyncio
import random
import sys

from cache.rawdisk import RawDiskStore
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB, payload


async def main(device: str, run: int, seed: int) -> None:
    rng = random.Random(seed)
    settings = RawDiskCacheSettings(
        device_path=device, total_size=32 * MiB, block_size=4096, sync_interval=0.02
    )
    store = await RawDiskStore.open(settings)
    durable: dict[str, int] = {}
    pending: dict[str, int] = {}
    print("READY", flush=True)
    n = 0
    while True:
        n += 1
        roll = rng.random()
        if roll < 0.75:
            key = f"r{run} k {rng.randrange(200)}"
            if await store.put_slice(key, payload(key, n, rng.randrange(1, 40_000)), None):
                pending[key] = n
        elif roll < 0.85:
            # Victim keys: deleted and rewritten freely; only checked for correct bytes.
            key = f"r{run}v {rng.randrange(50)}"
            await store.put_slice(key, payload(key, n, rng.randrange(1, 20_000)), None)
            if rng.random() < 0.5:
                await store.delete_prefix(f"r{run}v {rng.randrange(5)}")
        elif roll < 0.9:
            await store.delete(f"r{run}v")
        elif roll < 0.97:
            await store.sync()
            durable |= pending
            pending.clear()
            print("SYNCED " + ",".join(f"{k}@{v}" for k, v in sorted(durable.items())), flush=True)
        else:
            await store.checkpoint()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
