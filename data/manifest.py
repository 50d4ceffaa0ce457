"""The manifest (``meta.json``) of a prepared dataset directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common.errors import MissingFileError, UserError
from common.files import write_json

META_FILE = "meta.json"
FORMAT = "muonlab-tokens/1"


def write_meta(data_dir: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` atomically (its presence marks the dataset as complete)."""
    write_json(data_dir / META_FILE, meta)


def read_meta(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a complete dataset, or None when the directory holds none (yet)."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unknown dataset format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete dataset; a clear error when the directory is not one."""
    meta = read_meta(data_dir)
    if meta is None:
        raise MissingFileError(
            f"{data_dir} is not a prepared dataset (no {META_FILE}); run "
            f"`python -m data.prepare --source SRC --out {data_dir}` (re-run finishes an interrupted one)"
        )
    return meta
