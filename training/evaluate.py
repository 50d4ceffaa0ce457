"""Evaluation: validation loss and tail-token loss by frequency bucket (`Evaluator`, used by the loop),
and `python -m training.evaluate RUN_OR_CHECKPOINT`, which also reports spectra and QA accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from rich.table import Table

from common.cli import ExitCode, run_main
from common.console import console
from common.errors import UserError
from common.files import write_json
from common.rundir import checkpoint_id, checkpoint_step, locate
from data.loader import val_batches
from data.prepare import prepare_data
from metrics.names import EVAL_LOSS, HEAD_LOSS, QA_HEAD, QA_TAIL, TAIL_GAP, TAIL_LOSS
from metrics.spectra import model_spectra
from metrics.tail import TailAccumulator, make_buckets
from training.checkpoint import load_weights
from training.qa_eval import QAEval
from training.runtime import make_accelerator


class Evaluator:
    """Evaluates a model on the fixed validation rows of this process (same rows on every call)."""

    def __init__(self, accelerator: Accelerator, val_rows: list[torch.Tensor], token_counts: np.ndarray,
                 n_buckets: int, bucket_mode: str):
        self.accelerator = accelerator
        self.val_rows = val_rows
        self.n_buckets = n_buckets
        self.bucket_of = make_buckets(token_counts, k=n_buckets, mode=bucket_mode)

    def fixed_batch(self, rows: int = 8) -> torch.Tensor:
        """The first `rows` validation rows of this process: the fixed batch of `curvature/*`."""
        return self.val_rows[0][:rows].long()

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
        return {EVAL_LOSS: (total[0] / total[1]).item(), **tail.metrics()}


# -- `python -m training.evaluate`: score any checkpoint -----------------------------------------


def evaluate_checkpoint(path: str | Path, data_dir: str | None = None, tokens: int | None = None) -> dict:
    """Eval loss, tail buckets, spectra and (on bios) QA of a run's newest or a given checkpoint.

    The validation rows are the run's own (same seq_len, `train.eval_tokens` unless `tokens`), so
    the figures equal the ones the run logged at that step. Writes <run>/evals/step_<N>[...].json,
    whose name records a budget or dataset other than the run's (`RunDir.evaluation`) and whose
    contents record both. An evaluation already written of the same checkpoint (`checkpoint_id`) is
    returned as it is ("already": True); one of another checkpoint of that step is an error.
    """
    from training.config import load_config

    run, ckpt = locate(path)
    cfg = load_config([str(run.config)])
    budget = tokens or cfg.train.eval_tokens
    step = checkpoint_step(ckpt)
    target = run.evaluation(step, None if budget == cfg.train.eval_tokens else budget, _data_id(data_dir))
    if target.is_file():
        done = json.loads(target.read_text())
        if done.get("checkpoint_id", checkpoint_id(ckpt)) != checkpoint_id(ckpt):
            raise UserError(f"{target} holds the evaluation of an earlier checkpoint of step {step} (the run "
                            "was extended from before it since); move that file away to evaluate this one")
        return done | {"written": str(target), "already": True}
    model, _, _, _ = load_weights(ckpt)
    if data_dir is not None:
        cfg.data.dir = data_dir
    accelerator = make_accelerator(cfg.train.precision, wandb=False)
    dataset = prepare_data(dataclasses.asdict(cfg.data), accelerator.main_process_first())
    data, meta = dataset.path, dataset.load_meta()
    model = accelerator.prepare_model(model, evaluation_mode=True)
    results: dict[str, float] = {}
    if meta["val_tokens"]:
        t = cfg.train
        rows = list(val_batches(data, t.seq_len, budget, t.batch_size, 0, 1,
                                micro_batch_size=t.micro_batch_size))
        evaluator = Evaluator(accelerator, rows, dataset.counts(), cfg.metrics.tail_buckets,
                              cfg.metrics.tail_mode)
        results |= evaluator.loss_and_tail(model)
    whole = accelerator.unwrap_model(model)
    results |= model_spectra(whole)
    if (qa := QAEval.for_dataset(meta, data, cfg.metrics, accelerator.device)) is not None:
        results |= qa(whole)
    out = {"run": str(run.path), "checkpoint": str(ckpt), "checkpoint_id": checkpoint_id(ckpt), "step": step,
           "eval_tokens": budget,
           "data": {"dir": str(data), "source": meta["source"]}, "metrics": results}
    target.parent.mkdir(exist_ok=True)
    write_json(target, out)
    return out | {"written": str(target)}


def _data_id(data_dir: str | None) -> str | None:
    """A file-name-safe id of a prepared dataset given with --data: its name and a hash of its path."""
    if data_dir is None:
        return None
    resolved = Path(data_dir).resolve()
    return f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate",
                                     description="Evaluate a checkpoint: loss, tail buckets, spectra, QA.")
    parser.add_argument("path", help="runs/<name> (newest checkpoint) or runs/<name>/checkpoints/step_<N>")
    parser.add_argument("--data", help="a prepared dataset directory (default: the run's data settings)")
    parser.add_argument("--tokens", type=int, help="validation tokens (default: the run's train.eval_tokens)")
    args = parser.parse_args(argv)
    if args.tokens is not None and args.tokens <= 0:
        parser.error(f"--tokens must be positive, got {args.tokens}")
    return run_main(lambda: _evaluate_and_print(args))


def _evaluate_and_print(args: argparse.Namespace) -> int:
    out = evaluate_checkpoint(args.path, args.data, args.tokens)
    # The path goes on its own line: in the table's title it would wrap mid-path.
    print(f"checkpoint {out['checkpoint']}")
    if out.get("already"):
        print(f"already evaluated (same checkpoint, token budget and data): {out['written']}; "
              "delete it to evaluate again")
    # evaluations written before the budget was recorded lack it
    budget = f", {out['eval_tokens']:,} validation tokens" if "eval_tokens" in out else ""
    table = Table(title=f"step {out['step']}{budget}", show_header=False)
    shown = (EVAL_LOSS, HEAD_LOSS, TAIL_LOSS, TAIL_GAP, QA_HEAD, QA_TAIL)
    for key in shown:
        if key in out["metrics"]:
            table.add_row(key, f"{out['metrics'][key]:.4f}")
    console().print(table)
    if not out.get("already"):
        print(f"all {len(out['metrics'])} metrics written to {out['written']}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
