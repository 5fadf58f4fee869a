"""``python -m cache.rawdisk info|verify|format PATH``."""

from cache.rawdisk.cli import main

raise SystemExit(main())
