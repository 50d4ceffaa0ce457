"""The names of the logged metrics, as metrics.jsonl, summary.json and wandb carry them: one module for
the code that writes them (metrics/, training/) and the code that reads them (ablations/)."""

from __future__ import annotations

import re

EVAL_LOSS, TRAIN_LOSS = "eval/loss", "train/loss"
# Loss by token-frequency bucket (metrics/tail.py): bucket 0 the most frequent types.
HEAD_LOSS, TAIL_LOSS, TAIL_GAP = "eval/tail/head_loss", "eval/tail/tail_loss", "eval/tail/gap"
TAIL_FAMILY = "eval/tail/"
# QA first-token accuracy by person-frequency group (metrics/qa.py): group 0 the most frequent.
QA_HEAD, QA_TAIL, QA_MEAN = "qa/fta/head", "qa/fta/tail", "qa/fta/mean"
QA_FAMILY = "qa/fta/"
# The final values summary.json adds.
FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS = "final/eval_loss", "final/train_loss"

TAIL_BUCKET = re.compile(r"eval/tail/loss_b(\d+)")  # group 1: the bucket
QA_GROUP = re.compile(r"qa/fta/g(\d+)")  # group 1: the group


def tail_bucket(k: int) -> str:
    """The loss of token-frequency bucket `k`."""
    return f"eval/tail/loss_b{k}"


def qa_group(j: int) -> str:
    """The QA first-token accuracy of person-frequency group `j`."""
    return f"qa/fta/g{j}"
