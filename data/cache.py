"""Where muonlab keeps downloaded corpora and prepared datasets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The muonlab cache root: ``$MUONLAB_CACHE`` if set, else ``$XDG_CACHE_HOME/muonlab`` (XDG's
    default ``~/.cache/muonlab``)."""
    if root := os.environ.get("MUONLAB_CACHE"):
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "muonlab"
