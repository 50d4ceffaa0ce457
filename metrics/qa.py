"""First-token accuracy (FTA) of question answering, per frequency group (the bios task of data/bios.py).

An item is correct when the model's greedy (argmax) prediction right after the prompt equals the first
token of the answer. Prompt and answer are tokenized as ``prompt`` and ``prompt + answer``, the way the
pair appears in training text; the answer's first token is the first token of the second encoding past
the first. This needs the prompt's tokens to be a prefix of the full encoding, which holds for a
byte-level BPE when the prompt ends without a trailing space and the answer starts with one (a BPE merge
across the boundary raises an error naming the item). Prompts are right-padded into batches and the
logits are read at each prompt's own last position, so padding never affects a prediction (the model
is causal).

Returned metrics: ``qa/fta/g{j}`` for every group present, ``qa/fta/head`` (the lowest group id, the
most frequent), ``qa/fta/tail`` (the highest, the rarest) and ``qa/fta/mean`` (unweighted mean over the
groups). Call it with the model in eval mode and under no_grad (or let it do the latter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from metrics.names import QA_HEAD, QA_MEAN, QA_TAIL, qa_group


class _Item(Protocol):
    prompt: str
    answer: str
    group: int


def encode_items(tokenizer: Any, items: Sequence[_Item]) -> tuple[list[list[int]], list[int]]:
    """Prompt token ids and the answer's first token id of every item (a ``tokenizers.Tokenizer``)."""
    prompts = [e.ids for e in tokenizer.encode_batch([it.prompt for it in items])]
    fulls = [e.ids for e in tokenizer.encode_batch([it.prompt + it.answer for it in items])]
    targets = []
    for item, prompt, full in zip(items, prompts, fulls, strict=True):
        if not prompt or len(full) <= len(prompt) or full[: len(prompt)] != prompt:
            raise ValueError(
                f"QA item {item.prompt!r} + {item.answer!r}: the prompt's tokens are not a prefix of the "
                "prompt+answer tokens (empty parts, or a BPE merge across the boundary); end the prompt "
                "without a trailing space and start the answer with a space"
            )
        targets.append(full[len(prompt)])
    return prompts, targets


@torch.no_grad()
def first_token_accuracy(
    model: nn.Module, tokenizer: Any, items: Sequence[_Item], device: torch.device | str, batch_size: int = 64
) -> dict[str, float]:
    """``qa/fta/g{j}``, ``qa/fta/head``, ``qa/fta/tail``, ``qa/fta/mean`` of ``model`` on ``items``."""
    if not items:
        raise ValueError("no QA items to evaluate; pass data.bios.qa_items(cfg)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prompts, targets = encode_items(tokenizer, items)
    correct: dict[int, int] = defaultdict(int)
    total: dict[int, int] = defaultdict(int)
    for start in range(0, len(items), batch_size):
        batch = prompts[start : start + batch_size]
        lengths = torch.tensor([len(p) for p in batch])
        idx = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long)
        for row, ids in enumerate(batch):
            idx[row, : len(ids)] = torch.tensor(ids)
        logits = model(idx.to(device))
        last = logits[torch.arange(len(batch), device=logits.device), lengths.to(logits.device) - 1]
        hits = (last.argmax(dim=-1).cpu() == torch.tensor(targets[start : start + batch_size])).tolist()
        for item, hit in zip(items[start : start + batch_size], hits, strict=True):
            correct[item.group] += int(hit)
            total[item.group] += 1
    out = {qa_group(g): correct[g] / total[g] for g in sorted(total)}
    out[QA_HEAD] = out[qa_group(min(total))]
    out[QA_TAIL] = out[qa_group(max(total))]
    out[QA_MEAN] = sum(correct[g] / total[g] for g in total) / len(total)
    return out
