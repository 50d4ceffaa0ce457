"""The training loop: config -> data -> model -> optimizer -> accelerate loop -> logs, checkpoints.

One optimizer step consumes one global batch of `train.batch_size` sequences, split evenly over
the processes and, within a process, into micro-batches of `train.micro_batch_size` with gradient
accumulation. The loader's batch at step s is a pure function of (seed, s), so a resumed run and
a run on any number of processes see the same data in the same order.

Everything that can fail on bad input (config, data, model shape, routing) happens in
`Trainer.__init__`, before the run directory is touched.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from data.loader import TokenLoader, check_vocab, val_batches
from data.prepare import ensure_prepared
from metrics.spectra import model_spectra, snapshot_weights, update_spectra
from metrics.throughput import flops_per_token, mfu, peak_flops
from model import ModelConfig, Transformer
from model.presets import resolve_model_config
from optim.build import build_optimizer
from optim.groups import format_routing_table, routing_json
from optim.schedules import lr_multiplier
from training.batching import BatchPlan
from training.checkpoint import (
    WholeOptimizerState,
    checkpoint_whole_weights,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from training.config import ConfigError, resume_conflicts, run_dir, run_name
from training.evaluate import Evaluator
from training.fsdp import autocast_forward, copy_full_weights, fsdp_requested, main_copy, shard_model
from training.logger import MetricsLogger, truncate_after
from training.qa_eval import QAEval
from training.summary import print_summary, write_json, write_summary, write_text


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def make_accelerator(cfg: DictConfig) -> Accelerator:
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    return Accelerator(
        # Without a GPU, cpu=True is what makes accelerate see a torchrun launch as MULTI_CPU (gloo).
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if precision == "bf16" else "no",
        log_with="wandb" if cfg.logging.wandb else None,
    )


def prepare_data(cfg: DictConfig, accelerator: Accelerator) -> Path:
    """The prepared dataset directory (the main process prepares it first, the others reuse it)."""
    with accelerator.main_process_first():
        return ensure_prepared(
            cfg.data.source, cfg.data.dir, vocab_size=cfg.data.vocab_size, tokenizer=cfg.data.tokenizer,
            tokens=cfg.data.tokens, val_tokens=cfg.data.val_tokens, text_field=cfg.data.text_field,
            bios=OmegaConf.to_container(cfg.data.bios))


def model_config_for(cfg: DictConfig, meta: dict) -> ModelConfig:
    # The embedding table is padded to a multiple of 64 (GPT-2's 50257 -> 50304) for fast matmuls.
    vocab = -(-meta["vocab_size"] // 64) * 64
    model_cfg = resolve_model_config(OmegaConf.to_container(cfg.model), vocab_size=vocab)
    check_vocab(meta, model_cfg.vocab_size)
    if cfg.train.seq_len > model_cfg.max_seq_len:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds model.max_seq_len="
                          f"{model_cfg.max_seq_len}; lower train.seq_len or raise model.max_seq_len")
    return model_cfg


class Trainer:
    """One training run. `dry_run()` or `fit()` after construction."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.accelerator = accelerator = make_accelerator(cfg)
        self.is_main = accelerator.is_main_process
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.sharded = fsdp_requested(cfg) and self.world > 1  # one process: nothing to shard
        self.out_dir = run_dir(cfg)
        self.plan = BatchPlan.of(cfg.train.batch_size, cfg.train.micro_batch_size, self.world)
        self.data_dir = prepare_data(cfg, accelerator)
        self.meta = json.loads((self.data_dir / "meta.json").read_text())
        self.model_cfg = model_config_for(cfg, self.meta)
        set_seed(cfg.train.seed)
        self.model = Transformer(self.model_cfg)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.routing = routing_json(self.optimizer.routing)
        self.resume_from = _find_resume(cfg, self.out_dir)
        self._build_evaluation()

    def dry_run(self) -> None:
        """Print the routing table and write routing.json; nothing else is written."""
        if self.is_main:
            print(format_routing_table(self.optimizer.routing))
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.out_dir / "routing.json", self.routing)
            print(f"routing table written to {self.out_dir / 'routing.json'}")

    def fit(self) -> dict:
        """Train to `train.steps` (resuming if a checkpoint is there); returns the summary."""
        cfg, acc = self.cfg, self.accelerator
        self._start_run_dir()
        # Under FSDP2 the main process evaluates spectra and QA on a whole copy of the model.
        self.whole_copy = self.sharded and (cfg.metrics.spectra_every != 0 or self.qa is not None)
        if self.sharded:
            self._shard()
        else:
            model = torch.compile(self.model) if cfg.train.compile else self.model
            self.model = acc.prepare(model)
            self.raw_model = acc.unwrap_model(self.model)
        acc.register_for_checkpointing(WholeOptimizerState(self.optimizer))
        start, self.wall_before = 0, 0.0
        if self.resume_from is not None:
            state = load_checkpoint(acc, self.resume_from)
            start, self.wall_before = state["step"], state["wall_time_s"]
            if self.is_main:
                truncate_after(self.out_dir / "metrics.jsonl", start)
                print(f"resuming {self.out_dir} from {self.resume_from.name}")
        self.logger = MetricsLogger(acc, self.out_dir, cfg, run_name(cfg))
        self.logger.log_routing_table(self.routing)
        self.loader = TokenLoader(self.data_dir, "train", cfg.train.seq_len, cfg.train.batch_size,
                                  cfg.train.seed, rank=self.rank, world_size=self.world,
                                  aligned=cfg.data.bos_aligned)
        self.last_eval: dict[str, float] = {}
        self.weights_before: dict[str, torch.Tensor] | None = None
        self.train_loss = float("nan")
        self.run_start = time.perf_counter() - self.wall_before
        if start == 0:
            self._evaluate_at(0)
        self._loop(start)
        return self._finish(start)

    # -- setup ------------------------------------------------------------------------------

    def _start_run_dir(self) -> None:
        """config.yaml and routing.json; a fresh run also clears what an earlier attempt left."""
        # Every rank has read the run directory (resume checkpoint, saved config) in __init__ before
        # the main process rewrites it: otherwise a slower rank could read a half-written config.yaml
        # or miss the checkpoints a fresh start deletes.
        self.accelerator.wait_for_everyone()
        if self.is_main:
            out = self.out_dir
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "config.yaml", OmegaConf.to_yaml(self.cfg))
            write_json(out / "routing.json", self.routing)
            (out / "summary.json").unlink(missing_ok=True)
            if self.resume_from is None:
                (out / "metrics.jsonl").unlink(missing_ok=True)
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _shard(self) -> None:
        """FSDP2: shard the model over the processes and rebuild the optimizer on its parameters.

        The optimizer built in __init__ (which validated the routing) holds the parameters that
        fully_shard replaced with DTensors. `raw_model` is the whole copy on the main process.
        """
        cfg, acc = self.cfg, self.accelerator
        self.main_copy = main_copy(self.model, acc) if self.whole_copy else None
        self.sharded_model = autocast_forward(shard_model(self.model, acc.device, self.world), acc)
        self.optimizer = build_optimizer(self.sharded_model, cfg.optim)
        checkpoint_whole_weights(acc, self.sharded_model)
        self.model = torch.compile(self.sharded_model) if cfg.train.compile else self.sharded_model
        self.raw_model = self.main_copy if self.main_copy is not None else self.sharded_model
        if self.is_main:
            print(f"FSDP2: weights, gradients and optimizer state sharded over {self.world} processes")

    def _build_evaluation(self) -> None:
        """Validation rows, tail buckets, QA items, FLOP counts (no validation split: QA/spectra only)."""
        cfg, acc = self.cfg, self.accelerator
        self.evaluator = None
        if self.meta["val_tokens"]:
            val_rows = list(val_batches(self.data_dir, cfg.train.seq_len, cfg.train.eval_tokens,
                                        cfg.train.batch_size, self.rank, self.world,
                                        micro_batch_size=self.plan.micro))
            counts = np.load(self.data_dir / "token_counts.npy")
            self.evaluator = Evaluator(acc, val_rows, counts, cfg.metrics.tail_buckets, cfg.metrics.tail_mode)
        self.qa = QAEval.for_dataset(self.meta, self.data_dir, cfg.metrics, acc.device)
        self.flops_per_token = flops_per_token(self.model_cfg, cfg.train.seq_len)
        device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        self.peak_flops = peak_flops(device_name, override=cfg.metrics.peak_flops)

    # -- the loop ---------------------------------------------------------------------------

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.train.seq_len

    def _loop(self, start: int) -> None:
        cfg = self.cfg.train
        loss_sum = torch.zeros((), device=self.accelerator.device)
        window_steps, window_start = 0, time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=start, disable=not self.is_main, desc="train", unit="step",
                   dynamic_ncols=True)
        for step in range(start, cfg.steps):
            grad_norm = self._step(step, loss_sum, snapshot=self._spectra_due(step + 1))
            done, window_steps = step + 1, window_steps + 1
            bar.update(1)
            every = cfg.checkpoint_every
            checkpoint_due = done == cfg.steps or bool(every) and done % every == 0
            if done % cfg.log_every == 0 or checkpoint_due:
                tok_s = self.tokens_per_step * window_steps / (time.perf_counter() - window_start)
                self._log_train(done, loss_sum / window_steps, grad_norm, tok_s)
                bar.set_postfix(loss=f"{self.train_loss:.3f}", tok_s=f"{tok_s:,.0f}")
                loss_sum.zero_()
                window_steps, window_start = 0, time.perf_counter()
            if self._eval_due(done):
                self._evaluate_at(done)
            if checkpoint_due:
                state = {"step": done, "tokens": done * self.tokens_per_step,
                         "wall_time_s": time.perf_counter() - self.run_start}
                save_checkpoint(self.accelerator, self.out_dir, done, state, cfg.keep_checkpoints)
        bar.close()

    def _eval_due(self, step: int) -> bool:
        every = self.cfg.train.eval_every
        return bool(every) and step % every == 0 or step == self.cfg.train.steps

    def _spectra_due(self, step: int) -> bool:
        return self._eval_due(step) and _due(step, self.cfg.metrics.spectra_every, self.cfg.train.steps)

    def _step(self, step: int, loss_sum: torch.Tensor, snapshot: bool = False) -> torch.Tensor:
        """One optimizer step on the global batch at `step`; adds its loss to `loss_sum` (no sync).

        snapshot: keep the hidden weights from before the update, for the next evaluation's
        `spectra_update/*` (the spectrum of this step's update).
        """
        cfg, acc, plan = self.cfg, self.accelerator, self.plan
        mult = lr_multiplier(step, cfg.train.steps, cfg.optim.schedule, cfg.optim.warmup_steps,
                             cfg.optim.min_lr_ratio, cfg.optim.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * mult
        batch = self.loader.batch(step)
        if acc.device.type == "cuda":
            batch = batch.pin_memory()
        for i, rows in enumerate(batch.split(plan.micro)):
            rows = rows.to(acc.device, non_blocking=True)
            # Gradients are all-reduced only on the last micro-batch of the step.
            with acc.no_sync(self.model) if i < plan.accum - 1 else nullcontext():
                loss = self.model(rows[:, :-1], rows[:, 1:]) / plan.accum  # fused head + cross-entropy
                acc.backward(loss)
            loss_sum += loss.detach()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip)
        if snapshot:
            self._snapshot_weights()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _snapshot_weights(self) -> None:
        """The main process's copy of the hidden weights as they are now (under FSDP2 every rank gathers)."""
        if self.whole_copy:
            copy_full_weights(self.sharded_model, self.main_copy)
        if self.is_main:
            self.weights_before = snapshot_weights(self.raw_model)

    def _log_train(self, step: int, mean_loss: torch.Tensor, grad_norm: torch.Tensor, tok_s: float) -> None:
        # The only host-device synchronisation of the loop: at logging and checkpoint steps.
        self.train_loss = self.accelerator.reduce(mean_loss, reduction="mean").item()
        if not math.isfinite(self.train_loss):
            good = latest_checkpoint(self.out_dir)
            raise NonFiniteLossError(
                f"training loss is {self.train_loss} at step {step}; last good checkpoint: {good or 'none'}. "
                "Lower optim.adamw_lr/optim.muon_lr or set optim.grad_clip, then rerun (train.resume=auto)")
        metrics = {"train/loss": self.train_loss, "train/lr": self.optimizer.param_groups[0]["lr"],
                   "train/grad_norm": grad_norm.item(), "perf/tokens_per_s": tok_s}
        if (u := mfu(tok_s, self.flops_per_token, self.world, self.peak_flops)) is not None:
            metrics["perf/mfu"] = u
        self.logger.log(metrics, step)

    def _evaluate(self, step: int) -> None:
        cfg = self.cfg
        metrics = self.evaluator.loss_and_tail(self.model) if self.evaluator else {}
        # Spectra and QA run on the main process only: they read the (replicated) weights.
        if self.is_main and _due(step, cfg.metrics.spectra_every, cfg.train.steps):
            metrics.update(model_spectra(self.raw_model))
            if self.weights_before is not None:  # the last step's update (none before the first step)
                metrics.update(update_spectra(self.weights_before, self.raw_model))
                self.weights_before = None
        if self.is_main and self.qa is not None and _due(step, cfg.metrics.qa_every, cfg.train.steps):
            metrics.update(self.qa(self.raw_model))
        self.last_eval = metrics
        self.logger.log(metrics, step)

    def _evaluate_at(self, step: int) -> None:
        """`_evaluate`, after the main process's whole copy is refreshed (FSDP2; every rank gathers)."""
        if self.whole_copy:
            copy_full_weights(self.sharded_model, self.main_copy)
        self._evaluate(step)

    def _finish(self, start: int) -> dict:
        cfg = self.cfg.train
        wall = time.perf_counter() - self.run_start
        summary = {
            "run": run_name(self.cfg), "processes": self.world, "steps": cfg.steps,
            "tokens": cfg.steps * self.tokens_per_step, "wall_time_s": wall,
            "tokens_per_s": (cfg.steps - start) * self.tokens_per_step / max(wall - self.wall_before, 1e-9),
            "final/train_loss": self.train_loss, "final/eval_loss": self.last_eval.get("eval/loss"),
            **{k: v for k, v in self.last_eval.items() if "/layer" not in k},
        }
        if self.is_main:
            summary["initial/eval_loss"] = _first_eval_loss(self.out_dir)
            write_summary(self.out_dir, summary)
            print_summary(self.out_dir, summary)
        # Finishes the trackers and destroys the process group: a gloo/NCCL group left alive at exit
        # can abort a rank ("terminate called without an active exception").
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return summary


def train(cfg: DictConfig, dry_run: bool = False) -> dict | None:
    """Run (or, with dry_run, only build and print) the training job described by `cfg`."""
    trainer = Trainer(cfg)
    if dry_run:
        trainer.dry_run()
        return None
    return trainer.fit()


def _find_resume(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from, after checking that it belongs to the same experiment."""
    mode = cfg.train.resume
    if mode == "none":
        if latest_checkpoint(out_dir):
            raise ConfigError(f"{out_dir} already holds checkpoints and train.resume=none; choose another "
                              "run.name/run.dir, delete it, or resume with train.resume=auto")
        return None
    ckpt = latest_checkpoint(out_dir) if mode == "auto" else Path(mode)
    if ckpt is None:
        return None
    if not ckpt.is_dir():
        raise FileNotFoundError(f"train.resume={mode}: no such checkpoint directory")
    saved = out_dir / "config.yaml"
    if saved.is_file() and (diff := resume_conflicts(OmegaConf.load(saved), cfg)):
        raise ConfigError(f"cannot resume {out_dir}: its config differs in {', '.join(diff)}; "
                          "use another run.name or train.resume=none in a fresh directory")
    return ckpt


def _due(step: int, every: int | None, total: int) -> bool:
    """Whether an optional eval metric is due at `step` (None: at every eval; 0: never)."""
    if every is None:
        return True
    return bool(every) and (step % every == 0 or step == total)


def _first_eval_loss(out_dir: Path) -> float | None:
    with (out_dir / "metrics.jsonl").open() as f:
        for line in f:
            event = json.loads(line)
            if "eval/loss" in event:
                return event["eval/loss"]
    return None
