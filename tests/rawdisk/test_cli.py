"""python -m cache.rawdisk info|verify|format."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from cache.rawdisk import RawDiskStore
from cache.rawdisk.layout import RECORD_HEADER_SIZE, key_hash
from settings import RawDiskCacheSettings
from tests.rawdisk.conftest import MiB, flip_byte, payload

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache.rawdisk", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _fill(settings: RawDiskCacheSettings, count: int) -> int:
    store = await RawDiskStore.open(settings)
    for i in range(count):
        assert await store.put_slice(f"k {i}", payload(f"k {i}", 0, 9000), None)
    row = store._index.find(b"k 3", key_hash(b"k 3"))
    offset = store.geometry.block_offset(store._index.extent_of(row)[0])
    await store.close()
    return offset


def test_format_info_verify(tmp_path: Path) -> None:
    path = str(tmp_path / "dev.bin")
    done = cli("format", path, "--size", "16M")
    assert done.returncode == 0, done.stderr
    assert "formatted" in done.stdout
    again = cli("format", path, "--size", "16M")
    assert again.returncode == 2 and "--force" in again.stderr

    settings = RawDiskCacheSettings(device_path=path, total_size=16 * MiB, block_size=4096)
    offset = asyncio.run(_fill(settings, 10))

    info = cli("info", path, "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["entries"] == 10 and data["block_size"] == 4096
    assert 0 <= data["fragmentation"] <= 1
    assert "usage_ratio" in data

    ok = cli("verify", path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "10 ok, 0 damaged" in ok.stdout

    flip_byte(path, offset + RECORD_HEADER_SIZE + 10)
    bad = cli("verify", path)
    assert bad.returncode == 1
    assert "1 damaged" in bad.stdout and "k 3" in bad.stdout
    # verify without --repair is read-only: the file is byte for byte the same after it.
    before = Path(path).read_bytes()
    assert cli("verify", path).returncode == 1
    assert Path(path).read_bytes() == before
    # --repair says what it dropped and exits 0: the store is sound afterwards.
    repaired = cli("verify", path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "dropped: k 3" in repaired.stdout
    assert cli("verify", path).returncode == 0

    wiped = cli("format", path, "--force")
    assert wiped.returncode == 0, wiped.stderr
    assert json.loads(cli("info", path, "--json").stdout)["entries"] == 0


def test_cli_refuses_a_device_in_use(tmp_path: Path) -> None:
    path = str(tmp_path / "dev.bin")
    settings = RawDiskCacheSettings(device_path=path, total_size=16 * MiB, block_size=4096)

    async def hold() -> None:
        store = await RawDiskStore.open(settings)
        try:
            busy = await asyncio.to_thread(cli, "info", path)
            assert busy.returncode == 2
            assert "in use by another process" in busy.stderr
        finally:
            await store.close()

    asyncio.run(hold())


def test_cli_on_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "other.bin"
    path.write_bytes(b"not ours" * 4096)
    done = cli("info", str(path))
    assert done.returncode == 2 and "does not hold" in done.stderr
    fmt = cli("format", str(path), "--size", "16M")
    assert fmt.returncode == 2 and "other data" in fmt.stderr


def test_sizes_take_the_settings_syntax(tmp_path: Path) -> None:
    """One size syntax everywhere (README): MB is refused here as in the environment."""
    path = str(tmp_path / "dev.bin")
    refused = cli("format", path, "--size", "16MB")
    assert refused.returncode == 2 and "powers of 1024" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    for size in ("16MiB", "16m", "16Mi"):
        done = cli("format", path, "--size", size, "--force")
        assert done.returncode == 0, done.stderr


def test_info_prints_human_sizes_beside_bytes(tmp_path: Path) -> None:
    path = str(tmp_path / "dev.bin")
    assert cli("format", path, "--size", "16MiB").returncode == 0
    info = cli("info", path)
    assert info.returncode == 0, info.stderr
    line = next(line for line in info.stdout.splitlines() if line.startswith("total_size"))
    assert "16777216 (16.0 MiB)" in line, line
    # --json keeps plain numbers for scripts.
    assert json.loads(cli("info", path, "--json").stdout)["total_size"] == 16 * MiB


def test_info_and_verify_never_write_to_the_device(tmp_path: Path) -> None:
    """Inspecting a device must not change it, even when it finds something to repair."""
    path = str(tmp_path / "dev.bin")
    settings = RawDiskCacheSettings(device_path=path, total_size=16 * MiB, block_size=4096)
    asyncio.run(_fill(settings, 5))
    flip_byte(path, 40)  # inside the first superblock copy: open() used to rewrite it
    before = Path(path).read_bytes()
    info = cli("info", path)
    assert info.returncode == 0, info.stderr
    assert Path(path).read_bytes() == before
    checked = cli("verify", path)
    assert checked.returncode == 1 and "superblock copy was damaged" in checked.stdout
    assert Path(path).read_bytes() == before
    repaired = cli("verify", path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert Path(path).read_bytes() != before
    assert cli("verify", path).returncode == 0
