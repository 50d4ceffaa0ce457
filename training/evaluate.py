"""Periodic evaluation: validation loss, tail-token loss by frequency bucket, spectra, QA accuracy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from metrics.tail import TailAccumulator, make_buckets


class Evaluator:
    """Evaluates a model on the fixed validation rows of this process (same rows on every call)."""

    def __init__(self, accelerator: Accelerator, val_rows: list[torch.Tensor], token_counts: np.ndarray,
                 n_buckets: int, bucket_mode: str):
        self.accelerator = accelerator
        self.val_rows = val_rows
        self.n_buckets = n_buckets
        self.bucket_of = make_buckets(token_counts, k=n_buckets, mode=bucket_mode)

    @torch.no_grad()
    def loss_and_tail(self, model: torch.nn.Module) -> dict[str, float]:
        """`eval/loss` (mean over every validation token of every process) and `eval/tail/*`."""
        was_training = model.training
        model.eval()
        tail = TailAccumulator(self.bucket_of, self.n_buckets, device=self.accelerator.device)
        total = torch.zeros(2, dtype=torch.float64, device=self.accelerator.device)  # loss sum, tokens
        for rows in self.val_rows:
            rows = rows.to(self.accelerator.device, non_blocking=True)
            x, y = rows[:, :-1], rows[:, 1:]
            logits = model(x)
            losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
            tail.update(losses, y.flatten())
            total += torch.stack([losses.double().sum(), torch.tensor(losses.numel(), device=total.device)])
        model.train(was_training)
        # Sums and counts add up across processes, so the result does not depend on their number.
        total = self.accelerator.reduce(total, reduction="sum")
        tail.sums = self.accelerator.reduce(tail.sums, reduction="sum")
        tail.counts = self.accelerator.reduce(tail.counts, reduction="sum")
        return {"eval/loss": (total[0] / total[1]).item(), **tail.metrics()}
