"""Tail-token loss: validation loss split by how frequent the target token is in the training corpus.

Buckets (``make_buckets``) are built once from ``token_counts`` (int64[vocab], how often each token id
occurs in the training split) and give every token type a bucket id in ``0..k-1``:

* ``mode="share"`` (default): types are sorted by count, most frequent first (ties by token id), and
  cut into ``k`` consecutive buckets that each hold about the same share of the training *occurrences*.
  The cut is greedy: bucket ``b`` aims at ``remaining_occurrences / (k - b)`` and takes the next type
  while that brings its total strictly closer to the aim; a bucket always takes at least one type. So a type
  holding more than a bucket's share (the most frequent BPE token often holds over 10%) fills its
  bucket alone, bucket 0 always holds the most frequent type, and the remaining buckets share the rest
  evenly. Bucket ``k-1`` takes every type left at the end. When the vocabulary has fewer seen types
  than buckets, the last buckets can stay without seen types.
* ``mode="log"``: buckets of equal width in log(count) between the largest count (bucket 0) and the
  smallest non-zero count (bucket ``k-1``).

In both modes types never seen in training (count 0) go to the rarest bucket ``k-1``.

``TailAccumulator`` sums per-token losses per bucket of the *target* token; its ``sums`` and ``counts``
tensors can be all-reduced across ranks before ``metrics()``. Metric names: ``eval/tail/loss_b{k}``
(mean loss of bucket k), ``eval/tail/head_loss`` (bucket 0), ``eval/tail/tail_loss`` (bucket k-1) and
``eval/tail/gap`` (tail minus head). A bucket without validation tokens is omitted, never reported as 0.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics.names import HEAD_LOSS, TAIL_GAP, TAIL_LOSS, tail_bucket

MODES = ("share", "log")


def _check_counts(counts: np.ndarray, k: int) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"token counts must be a non-empty 1-D array (one count per token id), got shape "
                         f"{counts.shape}; pass the prepared dataset's (DatasetDir.counts)")
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"token counts must be integers, got dtype {counts.dtype}")
    if (counts < 0).any():
        raise ValueError("token counts must be non-negative; the dataset's counts look corrupted, "
                         "re-prepare the data")
    if counts.sum() == 0:
        raise ValueError("token counts are all zero; the training split is empty, re-prepare the data")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"number of tail buckets must be a positive integer, got {k!r}")
    return counts.astype(np.int64)


def _share_buckets(counts: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-counts, kind="stable")  # most frequent first, ties by token id
    bucket_of = np.full(counts.size, k - 1, dtype=np.int64)
    seen = order[counts[order] > 0]
    remaining = int(counts.sum())
    pos = 0
    for b in range(k - 1):
        if pos >= seen.size:
            break
        aim = remaining / (k - b)
        total = 0
        # take types while the bucket is empty or the next type moves its total strictly closer to the aim
        while pos < seen.size and (total == 0 or total + counts[seen[pos]] / 2 < aim):
            total += int(counts[seen[pos]])
            bucket_of[seen[pos]] = b
            pos += 1
        remaining -= total
    return bucket_of


def _log_buckets(counts: np.ndarray, k: int) -> np.ndarray:
    bucket_of = np.full(counts.size, k - 1, dtype=np.int64)
    seen = counts > 0
    log_c = np.log(counts[seen].astype(np.float64))
    hi, lo = log_c.max(), log_c.min()
    if hi == lo:
        bucket_of[seen] = 0
        return bucket_of
    position = k * (hi - log_c) / (hi - lo) + 1e-9  # a count exactly on an edge starts the next bucket
    bucket_of[seen] = np.minimum(position.astype(np.int64), k - 1)
    return bucket_of


def make_buckets(counts: np.ndarray, k: int = 10, mode: str = "share") -> np.ndarray:
    """Bucket id (0 = most frequent .. k-1 = rarest) of every token type; see the module docstring."""
    counts = _check_counts(counts, k)
    if mode == "share":
        return _share_buckets(counts, k)
    if mode == "log":
        return _log_buckets(counts, k)
    raise ValueError(f"unknown tail bucket mode {mode!r}; use one of {', '.join(MODES)}")


class TailAccumulator:
    """Per-bucket sums of per-token losses; ``sums``/``counts`` are float64 tensors of shape [k]."""

    def __init__(self, bucket_of: np.ndarray | torch.Tensor, k: int, device: torch.device | str = "cpu"):
        bucket_of = torch.as_tensor(np.asarray(bucket_of), dtype=torch.long, device=device)
        if bucket_of.ndim != 1:
            raise ValueError(f"bucket_of must be 1-D (one bucket per token id), "
                             f"got shape {tuple(bucket_of.shape)}")
        if bucket_of.numel() and (bucket_of.min() < 0 or bucket_of.max() >= k):
            raise ValueError(f"bucket ids must lie in 0..{k - 1}; "
                             f"build them with make_buckets(counts, k={k})")
        self.k = k
        self.bucket_of = bucket_of
        # float64 for both so that one all_reduce dtype fits and large token counts stay exact
        self.sums = torch.zeros(k, dtype=torch.float64, device=device)
        self.counts = torch.zeros(k, dtype=torch.float64, device=device)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.sums.zero_()
        self.counts.zero_()

    def update(self, token_losses: torch.Tensor, targets: torch.Tensor) -> None:
        """Add per-token losses (any shape) for their target ids (same shape); negative targets skipped."""
        if token_losses.shape != targets.shape:
            raise ValueError(f"token_losses {tuple(token_losses.shape)} and targets {tuple(targets.shape)} "
                             "must have the same shape; pass reduction='none' losses, one per target")
        device = self.sums.device
        losses = token_losses.detach().reshape(-1).to(device=device, dtype=torch.float64)
        targets = targets.reshape(-1).to(device)
        keep = targets >= 0  # ignore_index (e.g. -100) positions
        losses, targets = losses[keep], targets[keep]
        if targets.numel() and int(targets.max()) >= self.bucket_of.numel():
            raise ValueError(f"target id {int(targets.max())} is outside the vocabulary of "
                             f"{self.bucket_of.numel()} token counts; build the buckets from this dataset")
        buckets = self.bucket_of[targets]
        self.sums.index_add_(0, buckets, losses)
        self.counts.index_add_(0, buckets, torch.ones_like(losses))

    def metrics(self) -> dict[str, float]:
        """Mean loss per non-empty bucket plus head/tail/gap (entries whose bucket is empty are omitted)."""
        sums, counts = self.sums.cpu().tolist(), self.counts.cpu().tolist()
        out = {tail_bucket(b): s / c for b, (s, c) in enumerate(zip(sums, counts, strict=True))
               if c > 0}
        head, tail = out.get(tail_bucket(0)), out.get(tail_bucket(self.k - 1))
        if head is not None:
            out[HEAD_LOSS] = head
        if tail is not None:
            out[TAIL_LOSS] = tail
        if head is not None and tail is not None and self.k > 1:
            out[TAIL_GAP] = tail - head
        return out
