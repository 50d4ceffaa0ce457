"""Where muonlab keeps downloaded corpora and prepared datasets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The muonlab cache root: ``$MUONLAB_CACHE`` if set, else ``~/.cache/muonlab``."""
    root = os.environ.get("MUONLAB_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "muonlab"
