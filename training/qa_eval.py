"""First-token accuracy on the biography QA task, when the training data includes `bios`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from data.bios import BiosConfig, qa_items
from data.tokenizer import load_tokenizer
from metrics.qa import first_token_accuracy
from training.config import MetricsSection


def sample_qa_items(items: Iterable, max_per_group: int) -> list:
    """The first `max_per_group` QA items of every frequency group (deterministic)."""
    taken: dict[int, int] = {}
    out = []
    for item in items:
        if taken.get(item.group, 0) < max_per_group:
            taken[item.group] = taken.get(item.group, 0) + 1
            out.append(item)
    return out


class QAEval:
    """Callable `model -> {"qa/fta/g{j}": ..., "qa/fta/head": ..., ...}` on a fixed item sample."""

    def __init__(self, items: list, tokenizer, device: torch.device, batch_size: int = 64):
        self.items, self.tokenizer, self.device, self.batch_size = items, tokenizer, device, batch_size

    @classmethod
    def for_dataset(cls, meta: dict, data_dir: Path, metrics_cfg: MetricsSection,
                    device: torch.device) -> QAEval | None:
        """The QA eval of a prepared dataset, or None when it holds no biographies (or QA is off)."""
        settings = meta.get("bios")
        if not settings or metrics_cfg.qa_every == 0:
            return None
        items = sample_qa_items(qa_items(BiosConfig(**settings)), metrics_cfg.qa_max_per_group)
        return cls(items, load_tokenizer(data_dir), device)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = first_token_accuracy(model, self.tokenizer, self.items, self.device, self.batch_size)
        model.train(was_training)
        return out
