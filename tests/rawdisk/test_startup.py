"""A device the server cannot use stops startup with one clear line and no traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache.rawdisk import RawDiskError, RawDiskStore
from cache.rawdisk.preflight import check_device
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB

ROOT = Path(__file__).resolve().parents[2]


def _settings(path: Path | str, size: int = 16 * MiB) -> RawDiskCacheSettings:
    return RawDiskCacheSettings(device_path=str(path), total_size=size, block_size=4096)


def _start(
    device: str, size: int = 16 * MiB, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SLICECACHE_ENABLE_L2_CACHE": "true",
        "SLICECACHE_UPSTREAM_ADDRESS": "127.0.0.1:9",
        "SLICECACHE_RAW_DISK_CACHE__DEVICE_PATH": device,
        "SLICECACHE_RAW_DISK_CACHE__TOTAL_SIZE": str(size),
        "SLICECACHE_PORT": "9",  # never bound: the check comes first
    }
    return subprocess.run(
        [sys.executable, "-m", "app.ops.cli"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("case", ["under-a-file", "a-directory", "a-fifo"])
def test_server_refuses_an_unusable_device_in_one_line(tmp_path: Path, case: str) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    device = str(regular / "l2.bin") if case == "under-a-file" else str(tmp_path)
    if case == "a-fifo":
        # A read-only open of a FIFO blocks until a writer appears: startup hung forever.
        device = str(tmp_path / "fifo")
        os.mkfifo(device)
    done = _start(device, timeout=60)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("slicecache: cannot open the L2 device") and device in lines[0]


def test_check_device_names_each_reason(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"not ours" * 2048)
    cases = [
        ("Not a directory", _settings(regular / "l2.bin")),
        ("Not a directory", _settings(regular / "sub" / "l2.bin")),
        ("neither a regular file", _settings(tmp_path)),
        ("does not hold a slicecache L2 store", _settings(foreign)),
    ]
    for expected, settings in cases:
        with pytest.raises(RawDiskError, match=expected):
            check_device(settings)
    # A new device in a directory that does not exist yet is fine (it is created).
    check_device(_settings(tmp_path / "new" / "dir" / "l2.bin"))
    assert not (tmp_path / "new").exists()


def test_check_device_locked_and_wrong_geometry(tmp_path: Path) -> None:
    path = tmp_path / "l2.bin"

    async def run() -> None:
        store = await RawDiskStore.open(_settings(path))
        try:
            with pytest.raises(RawDiskError, match="in use by another process"):
                check_device(_settings(path))
        finally:
            await store.close()
        with pytest.raises(RawDiskError, match="geometry"):
            check_device(_settings(path, 32 * MiB))
        check_device(_settings(path))

    asyncio.run(run())
