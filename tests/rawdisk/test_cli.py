"""python -m cache.rawdisk info|verify|format."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from cache.rawdisk import RawDiskStore
from cache.rawdisk.cli import read_superblock
from cache.rawdisk.layout import RECORD_HEADER_SIZE, SUPERBLOCK_OFFSETS, Geometry, key_hash
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


def settings_geometry(path: str) -> Geometry:
    return read_superblock(path).geometry


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
    repaired = cli("verify", path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
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


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_verify_is_read_only_and_repair_says_what_it_did(tmp_path: Path) -> None:
    path = str(tmp_path / "dev.bin")
    settings = RawDiskCacheSettings(device_path=path, total_size=16 * MiB, block_size=4096)
    offset = asyncio.run(_fill(settings, 10))
    flip_byte(path, offset + RECORD_HEADER_SIZE + 10)  # record "k 3"
    flip_byte(path, SUPERBLOCK_OFFSETS[1] + 40)  # the backup superblock copy
    for slot in (0, 1):  # and both checkpoints: the index cannot be loaded
        flip_byte(path, settings_geometry(path).checkpoint_slot(slot) + 4096 + 8)
    before = _digest(path)
    mtime = os.stat(path).st_mtime_ns

    bad = cli("verify", path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "superblock" in bad.stdout and "checkpoint" in bad.stdout
    assert _digest(path) == before and os.stat(path).st_mtime_ns == mtime
    info = cli("info", path)
    assert info.returncode == 0, info.stderr
    assert _digest(path) == before

    repaired = cli("verify", path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "rewrote" in repaired.stdout and "superblock" in repaired.stdout
    assert cli("verify", path).returncode == 0


def test_repair_drops_damaged_records_and_exits_0(tmp_path: Path) -> None:
    path = str(tmp_path / "dev.bin")
    settings = RawDiskCacheSettings(device_path=path, total_size=16 * MiB, block_size=4096)
    offset = asyncio.run(_fill(settings, 10))
    flip_byte(path, offset + RECORD_HEADER_SIZE + 10)
    repaired = cli("verify", path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "dropped: k 3" in repaired.stdout
    ok = cli("verify", path)
    assert ok.returncode == 0 and "9 ok, 0 damaged" in ok.stdout


def test_info_prints_human_sizes(tmp_path: Path) -> None:
    path = str(tmp_path / "dev.bin")
    assert cli("format", path, "--size", "16M").returncode == 0
    out = cli("info", path).stdout
    assert "16777216 (16.0 MiB)" in out
    assert "4096 (4.0 KiB)" in out


async def _fill_and_crash(settings: RawDiskCacheSettings, count: int) -> int:
    """Puts synced to the journal, then a crash: no checkpoint names them. Journal offset."""
    store = await RawDiskStore.open(settings)
    for i in range(count):
        assert await store.put_slice(f"k {i}", payload(f"k {i}", 0, 9000), None)
    await store.sync()
    offset = store.geometry.journal_half(store._epoch)
    await store._abandon()
    return offset


def test_repair_mends_a_journal_damaged_at_its_first_record(tmp_path: Path) -> None:
    # A bit flip in the first record of the live epoch: nothing replays, and a writable
    # open wrote no fresh checkpoint (it only did so past many replayed records), so
    # `verify --repair` said "repaired" yet left the damage for every later verify: exit 1.
    path = str(tmp_path / "dev.bin")
    settings = RawDiskCacheSettings(device_path=path, total_size=16 * MiB, block_size=4096)
    journal_offset = asyncio.run(_fill_and_crash(settings, 5))
    flip_byte(path, journal_offset + 30)
    bad = cli("verify", path)
    assert bad.returncode == 1 and "journal epoch" in bad.stdout, bad.stdout
    repaired = cli("verify", path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    again = cli("verify", path)
    assert again.returncode == 0, again.stdout + again.stderr


def test_cli_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    # read_superblock opened the path O_RDONLY: on a FIFO that waits for a writer forever.
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    for command in ("info", "verify"):
        done = cli(command, fifo)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "neither a regular file nor a block device" in done.stderr
        assert "Traceback" not in done.stderr


def test_repair_extends_a_truncated_file_and_drops_what_was_lost(tmp_path: Path) -> None:
    # A truncated file was refused by every command, --repair included: the only way out
    # was a reformat that erases the records the file still holds intact.
    path = str(tmp_path / "dev.bin")
    settings = RawDiskCacheSettings(device_path=path, total_size=16 * MiB, block_size=4096)
    asyncio.run(_fill(settings, 40))
    geo = settings_geometry(path)
    cut = geo.data_offset + 10 * 3 * 4096  # about the first 10 records survive
    os.truncate(path, cut)
    bad = cli("verify", path)
    assert bad.returncode != 0 and "less than its total_size" in bad.stdout + bad.stderr
    assert os.path.getsize(path) == cut  # verify stays read-only
    repaired = cli("verify", path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "extended" in repaired.stdout and "dropped" in repaired.stdout
    assert os.path.getsize(path) == 16 * MiB
    again = cli("verify", path)
    assert again.returncode == 0, again.stdout + again.stderr
    kept = json.loads(cli("info", path, "--json").stdout)["entries"]
    assert 0 < kept < 40


def test_sizes_take_the_settings_syntax(tmp_path: Path) -> None:
    """One size syntax everywhere (README): MB is refused here as in the environment."""
    path = str(tmp_path / "dev.bin")
    refused = cli("format", path, "--size", "16MB")
    assert refused.returncode == 2 and "powers of 1024" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    for size in ("16MiB", "16m", "16Mi"):
        done = cli("format", path, "--size", size, "--force")
        assert done.returncode == 0, done.stderr
