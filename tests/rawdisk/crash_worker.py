"""Child process of the crash loop: RawDiskStore under mixed load until it is killed.

Usage: python -m tests.rawdisk.crash_worker DEVICE CYCLE SEED

Writers, readers, a purger, a syncer and a checkpointer run concurrently. Every event the
parent needs is one flushed stdout line, in event-loop order:

    p VERSION KEY      a put is issued           P VERSION KEY   it returned True
    d PREFIX           a delete is issued        D PREFIX        it returned (durable)
    s ID / S ID        an explicit sync started / returned
    W KEY              a read returned wrong bytes (must never happen)
"""

from __future__ import annotations

import asyncio
import random
import sys

from cache.rawdisk import RawDiskStore
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB, check_payload, payload

OBJECTS = 16
SLICES = 24
DEVICE_SIZE = 64 * MiB


def settings_for(device: str) -> RawDiskCacheSettings:
    return RawDiskCacheSettings(
        device_path=device, total_size=DEVICE_SIZE, block_size=4096, sync_interval=0.05
    )


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(device: str, cycle: int, seed: int) -> None:
    rng = random.Random(seed)
    store = await RawDiskStore.open(settings_for(device))
    version = cycle * 10_000_000
    say("READY")

    async def writer() -> None:
        nonlocal version
        while True:
            version += 1
            v = version
            key = f"o{rng.randrange(OBJECTS)} {rng.randrange(SLICES)}"
            say(f"p {v} {key}")
            data = payload(key, v, rng.choice((100, 3000, 20_000, 48_000)))
            if await store.put_slice(key, data, None, compressible=rng.random() < 0.3):
                say(f"P {v} {key}")

    async def reader() -> None:
        while True:
            key = f"o{rng.randrange(OBJECTS)} {rng.randrange(SLICES)}"
            got = await store.get_slice(key)
            if got is not None and not check_payload(key, bytes(got)):
                say(f"W {key}")
            await asyncio.sleep(0)

    async def purger() -> None:
        while True:
            await asyncio.sleep(rng.uniform(0.01, 0.1))
            obj = f"o{rng.randrange(OBJECTS)}"
            if rng.random() < 0.5:
                prefix = f"{obj} "
                say(f"d {prefix}")
                await store.delete(obj)
            else:
                prefix = f"{obj} {rng.randrange(SLICES)}"
                say(f"d {prefix}")
                await store.delete_prefix(prefix)
            say(f"D {prefix}")

    async def syncer() -> None:
        n = 0
        while True:
            await asyncio.sleep(rng.uniform(0.02, 0.2))
            n += 1
            say(f"s {n}")
            await store.sync()
            say(f"S {n}")

    async def checkpointer() -> None:
        while True:
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            await store.checkpoint()

    tasks = [writer() for _ in range(3)] + [reader() for _ in range(3)]
    await asyncio.gather(*tasks, purger(), syncer(), checkpointer())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
