"""The one exception the L2 store raises at startup (and from the admin CLI)."""

from __future__ import annotations


class RawDiskError(Exception):
    """A clear, operator-facing reason why the L2 device cannot be used."""
