"""Prepare a dataset: source -> tokenizer -> token shards + counts + manifest.

``python -m data.prepare --source SRC --out DIR [--tokenizer NAME|PATH] [--vocab-size N]
[--tokens N] [--val-tokens N] [--workers N] [--shard-tokens N] [--text-field F] [--seed S]``

The Python entry points: ``prepare`` (into a given directory), ``prepare_data`` (what train.py and
evaluation call with a run's ``data`` section: its dataset, prepared first where needed),
``ensure_prepared`` (a finished directory as it is, else prepared there or in the cache) and
``dataset_dir_for`` (the cache directory of a set of settings). How a run works: ``data.pipeline``;
the directory's files: ``data.dataset``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from common.cli import ExitCode
from common.errors import UserError
from data.dataset import DatasetDir
from data.manifest import read_meta
from data.pipeline import prepare_dataset
from data.settings import (
    DEFAULT_SHARD_TOKENS,
    DEFAULT_VAL_TOKENS,
    DEFAULT_VOCAB_SIZE,
    Settings,
    make_settings,
)

# The keys of a run's `data` config section that are dataset settings (``make_settings``'s keywords).
CONFIG_SETTINGS = ("vocab_size", "tokenizer", "tokens", "val_tokens", "text_field", "bios")


def config_settings(data: Mapping[str, Any]) -> Settings:
    """The dataset settings of a run's `data` section (as a mapping: source and CONFIG_SETTINGS; a key
    it lacks takes ``make_settings``' default)."""
    return make_settings(data["source"], **{k: data[k] for k in CONFIG_SETTINGS if k in data})


def prepare_data(data: Mapping[str, Any], first: AbstractContextManager[Any] | None = None) -> DatasetDir:
    """The prepared dataset of a run's `data` section: `data.dir` when it holds a finished dataset, else
    prepared there or in the cache first. `first` wraps the preparation (accelerate's
    `main_process_first()`: the main process prepares, the others then reuse it)."""
    with first or contextlib.nullcontext():
        return DatasetDir(ensure_prepared(config_settings(data), data.get("dir")))


def dataset_dir_for(source: str, **settings: Any) -> Path:
    """The cache directory for a dataset prepared with these settings (keywords: ``make_settings``)."""
    return make_settings(source, **settings).dataset_dir()


def ensure_prepared(
    settings: Settings, data_dir: str | os.PathLike | None = None, *, workers: int | None = None
) -> Path:
    """A ready dataset directory for train.py: ``data_dir`` as is when it already holds a finished
    dataset, otherwise prepared there (or in the cache directory for ``settings``) first."""
    if data_dir is not None and read_meta(data_dir) is not None:
        return Path(data_dir)
    out = Path(data_dir) if data_dir is not None else settings.dataset_dir()
    return prepare_dataset(settings, out, workers=workers)


def prepare(
    source: str,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    tokenizer: str | None = None,
    tokens: int | None = None,
    val_tokens: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    seed: int = 0,
    text_field: str = "text",
    bios: dict[str, Any] | None = None,
    bos: bool = False,
    workers: int | None = None,
    stop_after_shards: int | None = None,
) -> Path:
    """Prepare ``source`` into ``out_dir`` with ``workers`` tokenizer processes (default: one per core);
    returns ``out_dir``.

    Idempotent: a finished directory is left untouched, an interrupted one is resumed.
    ``stop_after_shards`` ends the run after that many new shards, as an interruption would
    (re-run to continue). Concurrent calls on one directory wait for each other (file lock)."""
    settings = make_settings(
        source, vocab_size=vocab_size, tokenizer=tokenizer, tokens=tokens, val_tokens=val_tokens,
        shard_tokens=shard_tokens, seed=seed, text_field=text_field, bios=bios, bos=bos,
    )
    return prepare_dataset(settings, Path(out_dir), workers=workers, stop_after_shards=stop_after_shards)


# --- CLI ---------------------------------------------------------------------------------------


def _count(text: str) -> int:
    """Token counts accept scientific notation: --tokens 5e9."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text}")
    return int(value)


def _bios_setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--bios expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    sources = "builtin:shakespeare | PATH/GLOB | hf:NAME[:CONFIG] | bios, or several joined with +"
    p.add_argument("--source", required=True, help=sources)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tokenizer", help="tokenizer.json path or hub name (default: train a byte-level BPE)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="vocab of the trained BPE")
    p.add_argument("--tokens", type=_count, help="training-token budget (default: the whole source)")
    val_help = (f"validation budget of path/hf sources (default {DEFAULT_VAL_TOKENS:.0e}); "
                "builtin:shakespeare has its own validation works, bios its held-out biographies "
                "(--bios heldout=N)")
    p.add_argument("--val-tokens", type=_count, help=val_help)
    p.add_argument("--workers", type=int, help="tokenizer processes (default: all cores)")
    p.add_argument("--shard-tokens", type=_count, default=DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--text-field", default="text", help="text column of jsonl/parquet/hf sources")
    p.add_argument("--seed", type=int, default=0, help="interleaving order of '+'-joined sources")
    p.add_argument("--bos", action="store_true", help="prepend a BOS token to every document")
    p.add_argument("--bios", type=_bios_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="data.bios.BiosConfig setting (repeatable)")
    a = p.parse_args(argv)
    try:
        prepare(
            a.source, a.out, workers=a.workers, vocab_size=a.vocab_size, tokenizer=a.tokenizer,
            tokens=a.tokens, val_tokens=a.val_tokens, shard_tokens=a.shard_tokens, seed=a.seed,
            text_field=a.text_field, bios=dict(a.bios) or None, bos=a.bos,
        )
    except UserError as e:  # bad input: one line; anything else is a bug and keeps its traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # the shards written so far are complete: stopped, resumable (common.cli)
        print(f"stopped: re-run the same command to resume {a.out} after its last complete shard",
              file=sys.stderr)
        sys.exit(ExitCode.STOPPED)


if __name__ == "__main__":
    main()
