"""Admission and eviction policy.

* Admission (TinyLFU doorkeeper): a count-min sketch counts how often each key is asked
  for. While the device is below the low watermark everything is admitted; above it a
  key must have been requested at least :data:`ADMIT_MIN_USES` times, so a one-hit
  wonder (a file fetched once) never displaces entries that are read again.
* Eviction (sampled LFU with ageing): the evictor samples a few rows and evicts the one
  with the lowest frequency halved for every :data:`AGE_SECONDS` since its last use,
  ties broken by last use. Expired rows go first.
"""

from __future__ import annotations

ADMIT_MIN_USES = 2
AGE_SECONDS = 600
SAMPLE = 16
HIGH_WATERMARK = 0.95
LOW_WATERMARK = 0.90

_MASK64 = (1 << 64) - 1
_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)
_HALVE = bytes(v >> 1 for v in range(256))
_MAX_COUNT = 15


class CountMinSketch:
    """4 rows of saturating byte counters; all counts halve every ``10 * width`` additions."""

    def __init__(self, width: int) -> None:
        bits = max(10, (width - 1).bit_length())
        self.width = 1 << bits
        self._shift = 64 - bits
        self._table = bytearray(4 * self.width)
        self._additions = 0
        self._reset_at = 10 * self.width

    def _slots(self, h: int) -> list[int]:
        w = self.width
        shift = self._shift
        return [i * w + (((h * seed) & _MASK64) >> shift) for i, seed in enumerate(_SEEDS)]

    def add(self, h: int) -> None:
        table = self._table
        for slot in self._slots(h):
            if table[slot] < _MAX_COUNT:
                table[slot] += 1
        self._additions += 1
        if self._additions >= self._reset_at:
            self._table = bytearray(self._table.translate(_HALVE))
            self._additions //= 2

    def estimate(self, h: int) -> int:
        table = self._table
        return min(table[slot] for slot in self._slots(h))


def eviction_score(freq: int, atime: int, now: int) -> tuple[int, int]:
    """Lower is evicted first."""
    age = max(0, now - atime) // AGE_SECONDS
    return (freq >> min(age, 8), atime)
