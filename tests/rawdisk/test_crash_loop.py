"""A short run of the L2 crash loop (`make crash` runs 30 cycles): real kill -9."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rawdisk import crash_loop


def test_crash_loop_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device = str(tmp_path / "l2.bin")
    code = crash_loop.main(["--cycles", "3", "--max-run", "0.6", "--seed", "7", "--device", device])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 wrong bytes on disk, 0 wrong bytes read" in out and "0 failed cycles" in out
