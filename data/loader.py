"""Batches of token windows from a prepared dataset: memory-mapped, deterministic, rank-aware.

A split's tokens are cut into windows of ``seq_len + 1`` tokens (inputs and shifted targets)
that start every ``seq_len`` tokens, so each token is a target exactly once per epoch; windows
never cross a shard boundary. With ``aligned=True`` windows instead start right after an EOS
(at a document start). Training order: the windows shuffled per epoch with ``(seed, epoch)``;
row ``i`` of the global batch at step ``s`` is window ``step * batch_size + i`` of that order,
so a batch is a pure function of ``(seed, step)`` and never depends on the number of processes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from data.manifest import check_shards, load_meta
from data.shards import read_shard


class _Windows:
    """The windows of one split: which shard and where each starts."""

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int, aligned: bool) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if seq_len < 1:
            raise UserError(f"seq_len must be >= 1, got {seq_len}")
        self.meta = load_meta(data_dir)
        self.seq_len = seq_len
        entries = self.meta["shards" if split == "train" else "val_shards"]
        check_shards(data_dir, self.meta, entries)  # once per split and process: bit rot, truncation
        self.shards = [read_shard(Path(data_dir) / e["file"]) for e in entries]
        shard_ids, starts = [], []
        for i, tokens in enumerate(self.shards):
            if aligned:  # document starts: after each EOS, and the very first token
                s = np.flatnonzero(tokens == self.meta["eos_id"]) + 1
                s = np.concatenate([[0], s]) if i == 0 else s
                s = s[s + seq_len + 1 <= tokens.size]
            else:
                s = np.arange(0, tokens.size - seq_len, seq_len, dtype=np.int64)
            shard_ids.append(np.full(s.size, i, dtype=np.int32))
            starts.append(s.astype(np.int64))
        self.shard_ids = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        total = sum(t.size for t in self.shards)
        if total == 0:
            raise UserError(
                f"{data_dir} has no {split} tokens (source {self.meta['source']!r}; `bios` has a validation "
                "split only with data.bios.heldout > 0); set data.bios.heldout=1 or add a source with text "
                "to validate on, e.g. builtin:shakespeare+bios"
            )
        if self.starts.size == 0:
            raise UserError(
                f"{data_dir}: the {split} split ({total:,} tokens, {len(self.shards)} shards) has no "
                f"window of seq_len + 1 = {seq_len + 1} tokens{' starting after an EOS' if aligned else ''}; "
                "use a smaller seq_len or prepare more data"
            )

    def __len__(self) -> int:
        return int(self.starts.size)

    def rows(self, windows: np.ndarray) -> torch.Tensor:
        """The token rows of the given window indices, as a LongTensor [len(windows), seq_len + 1]."""
        out = np.empty((len(windows), self.seq_len + 1), dtype=np.int64)
        for row, w in enumerate(windows.tolist()):
            start = self.starts[w]
            out[row] = self.shards[self.shard_ids[w]][start : start + self.seq_len + 1]
        return torch.from_numpy(out)


def _check_split(batch_size: int, rank: int, world_size: int) -> int:
    """This rank's share of a global batch; clear errors for impossible splits."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size < 1 or batch_size % world_size:
        raise UserError(
            f"global batch_size {batch_size} must be a positive multiple of world_size {world_size}; "
            "change train.batch_size or the number of processes"
        )
    return batch_size // world_size


class TokenLoader:
    """Training batches: ``batch(step)`` is this rank's rows of the global batch at ``step``."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        aligned: bool = False,
    ) -> None:
        self.local_batch = _check_split(batch_size, rank, world_size)
        self.windows = _Windows(data_dir, split, seq_len, aligned)
        self.meta = self.windows.meta
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self._orders: dict[int, np.ndarray] = {}

    @property
    def windows_per_epoch(self) -> int:
        return len(self.windows)

    def batch(self, step: int) -> torch.Tensor:
        """LongTensor [batch_size // world_size, seq_len + 1]: inputs ``[:, :-1]``, targets ``[:, 1:]``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        first = step * self.batch_size + self.rank * self.local_batch
        epochs, positions = np.divmod(np.arange(first, first + self.local_batch), len(self.windows))
        pairs = zip(epochs.tolist(), positions.tolist(), strict=True)
        windows = np.array([self._order(e)[p] for e, p in pairs], dtype=np.int64)
        return self.windows.rows(windows)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a batch spans at most two epochs
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
        return self._orders[epoch]


def val_batches(
    data_dir: str | os.PathLike,
    seq_len: int,
    eval_tokens: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    micro_batch_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Evaluation rows: the first ``eval_tokens`` of the validation split, in order, as windows of
    ``seq_len + 1``, rounded to whole global batches of ``batch_size`` rows. Rank ``r`` gets rows
    ``[r*b, (r+1)*b)`` of every global batch (``b = batch_size // world_size``), in chunks of at most
    ``micro_batch_size``. The set of rows depends on (eval_tokens, seq_len, batch_size) only, so pass
    a global batch size that does not change with the number of processes."""
    local = _check_split(batch_size, rank, world_size)
    windows = _Windows(data_dir, "val", seq_len, aligned=False)
    wanted = max(1, eval_tokens // seq_len)
    if wanted > len(windows):
        warnings.warn(
            f"eval_tokens={eval_tokens:,} exceeds the validation split of {data_dir} "
            f"({len(windows)} windows of {seq_len}); evaluating on all of it",
            stacklevel=2,
        )
    if len(windows) < batch_size:
        raise UserError(
            f"validation split has {len(windows)} windows of seq_len {seq_len}, fewer than one eval batch of "
            f"{batch_size}; lower train.batch_size (also the eval batch) or train.seq_len, or prepare more "
            "validation data (data.val_tokens)"
        )
    n_rows = max(batch_size, min(wanted, len(windows)) // batch_size * batch_size)
    chunk = micro_batch_size or local
    for first in range(rank * local, n_rows, batch_size):
        for lo in range(first, first + local, chunk):
            yield windows.rows(np.arange(lo, min(lo + chunk, first + local)))


def check_vocab(meta: dict[str, Any], model_vocab_size: int) -> None:
    """Raise a clear error when the model cannot embed every token id of the dataset."""
    if model_vocab_size < meta["vocab_size"]:
        raise UserError(
            f"model vocab_size {model_vocab_size} is smaller than the dataset's tokenizer vocabulary "
            f"{meta['vocab_size']} (tokenizer {meta['tokenizer']!r}, source {meta['source']!r}); set "
            f"model.vocab_size >= {meta['vocab_size']} or use data prepared with a smaller vocabulary"
        )
