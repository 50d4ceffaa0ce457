"""The manifest (``meta.json``) of a prepared dataset directory, and the check of its shards against it."""

from __future__ import annotations

import json
import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.checksums import file_problem
from common.errors import MissingFileError, UserError
from common.files import write_json
from data.settings import DEFAULT_SHARD_TOKENS, DEFAULT_VAL_TOKENS, DEFAULT_VOCAB_SIZE

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


def check_shards(data_dir: str | os.PathLike, meta: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Raise a UserError naming the first shard of `entries` whose bytes differ from the sha256 the
    manifest recorded at preparation, and the command that prepares the dataset again.

    Every byte is read once (threads: hashlib releases the GIL), when a split is opened; entries
    without a sha256 (older manifests) are accepted unverified.
    """
    data_dir = Path(data_dir)
    checked = [e for e in entries if e.get("sha256")]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(checked) or 1)) as pool:
        problems = pool.map(lambda e: file_problem(data_dir / e["file"], {"sha256": e["sha256"]}), checked)
        for problem in problems:
            if problem is not None:
                raise UserError(f"{data_dir}: shard {problem}; the prepared dataset is damaged, prepare it "
                                f"again: `rm -r {data_dir} && {prepare_command(data_dir, meta)}`")


# (settings key, data.prepare flag, the flag's default: not repeated)
_PREPARE_FLAGS = (
    ("tokenizer", "--tokenizer", None), ("vocab_size", "--vocab-size", DEFAULT_VOCAB_SIZE),
    ("tokens", "--tokens", None), ("val_tokens", "--val-tokens", DEFAULT_VAL_TOKENS),
    ("shard_tokens", "--shard-tokens", DEFAULT_SHARD_TOKENS), ("text_field", "--text-field", "text"),
    ("seed", "--seed", 0),
)


def prepare_command(data_dir: Path, meta: dict[str, Any]) -> str:
    """The `python -m data.prepare` command line that prepares the dataset of `meta` into `data_dir`
    (from the settings it records; only --source when it records none)."""
    settings = meta.get("settings") or {"source": meta.get("source", "SRC")}
    words = ["python", "-m", "data.prepare", "--source", settings["source"], "--out", str(data_dir)]
    for key, flag, default in _PREPARE_FLAGS:
        if (value := settings.get(key)) not in (None, default):
            words += [flag, str(value)]
    words += ["--bos"] if settings.get("bos") else []
    for key, value in (settings.get("bios") or {}).items():
        words += ["--bios", f"{key}={json.dumps(value)}"]
    return shlex.join(words)
