"""A prepared dataset directory's layout, in one place: its file names and how its files are read.

    <dataset>/
      meta.json            the manifest (data.manifest): format, settings, splits, each shard's sha256;
                           written last, its presence marks the dataset complete
      tokenizer.json       the tokenizer (data.tokenizer)
      token_counts.npy     int64[vocab]: how often each token id occurs in the training split
      <split shards>       the token shards (data.shards), named in meta.json's "shards"/"val_shards"
      .prepare_state.npz   the pipeline's resume state while it runs (data.pipeline)
      .prepare.lock        held by the process preparing it

`python -m data.prepare` writes it (data.pipeline); train.py, evaluation and export read it through
`DatasetDir`. `data.prepare.prepare_data` gives the directory of a run's data settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.manifest import META_FILE, load_meta, read_meta
from data.tokenizer import FILE_NAME as TOKENIZER_FILE

COUNTS_FILE = "token_counts.npy"


@dataclass(frozen=True)
class DatasetDir:
    """The directory of one prepared dataset (it need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def manifest(self) -> Path:
        return self.path / META_FILE

    @property
    def tokenizer(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def token_counts(self) -> Path:
        return self.path / COUNTS_FILE

    def read_meta(self) -> dict[str, Any] | None:
        """The manifest (its format checked), or None while the dataset is not complete."""
        return read_meta(self.path)

    def load_meta(self) -> dict[str, Any]:
        """The manifest (its format checked); an error naming the prepare command when there is none."""
        return load_meta(self.path)

    def counts(self) -> np.ndarray:
        """How often each token id occurs in the training split (int64[vocab]; the tail buckets')."""
        return np.load(self.token_counts)
