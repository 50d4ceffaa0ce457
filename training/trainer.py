"""The training loop: config -> data -> model -> optimizer -> accelerate loop -> logs, checkpoints.

One optimizer step consumes one global batch of `train.batch_size` sequences, split evenly over
the processes and, within a process, into micro-batches of `train.micro_batch_size` with gradient
accumulation. The loader's batch at step s is a pure function of (seed, s), so a resumed run and
a run on any number of processes see the same data in the same order.

Everything that can fail on bad input (config, data, model shape, routing) happens in
`Trainer.__init__`, before the run directory is touched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from common.errors import UserError
from common.files import write_bytes, write_json, write_text
from common.rundir import RunDir, checkpoint_step
from data.loader import TokenLoader, check_vocab, val_batches
from data.prepare import prepare_data
from metrics.curvature import curvature_metrics
from metrics.names import EVAL_LOSS, FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS, QA_TAIL, TRAIN_LOSS
from metrics.spectra import model_spectra, snapshot_weights, update_spectra
from metrics.throughput import flops_per_token, mfu, peak_flops
from model import ModelConfig, Transformer
from model.presets import resolve_model_config
from optim.build import build_optimizer
from optim.combined import CombinedOptimizer
from optim.groups import format_routing_table, group_of, routing_json
from optim.routing import route_config
from training.batching import BatchPlan
from training.cadence import Cadence, Due
from training.checkpoint import (
    WholeOptimizerState,
    checkpoint_unwrapped_weights,
    checkpoint_whole_weights,
    checkpoint_write_errors,
    load_checkpoint,
    save_checkpoint,
)
from training.config import (
    ConfigError,
    RunConfig,
    config_yaml,
    schedule_of,
)
from training.evaluate import Evaluator
from training.fsdp import WholeModel, autocast_forward, fsdp_requested, shard_model
from training.identity import run_dir, run_name
from training.logger import MetricsLogger
from training.qa_eval import QAEval
from training.rates import meta_model
from training.resume import Start, plan_start
from training.run_lock import run_lock
from training.runtime import make_accelerator
from training.step_timer import StepTimer, synchronize
from training.stop import Stopped, StopSignals
from training.summary import print_summary, write_summary


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


@dataclass
class LoopState:
    """Where the loop is: steps done, wall time before this process started, the latest figures."""

    step: int = 0
    wall_before_s: float = 0.0  # wall time of the earlier attempts (a resumed run)
    train_loss: float = math.nan  # the latest logged train/loss (progress bar, NaN message)
    eval_loss: float = math.nan  # the latest eval/loss (progress bar)
    # The logging window open at a checkpoint (only a stop leaves one open): steps since the last
    # train/loss event and each rank's loss sum, so the resumed run logs the same means.
    window_steps: int = 0
    window_loss_sums: list[float] = field(default_factory=list)

    def checkpoint_state(self, tokens_per_step: int, wall_time_s: float) -> dict:
        """What a checkpoint records of the loop (its loop_state.json)."""
        state = {"step": self.step, "tokens": self.step * tokens_per_step, "wall_time_s": wall_time_s}
        if self.window_steps:
            state["window"] = {"steps": self.window_steps, "loss_sums": self.window_loss_sums}
        return state

    @classmethod
    def from_checkpoint(cls, saved: dict, world: int) -> LoopState:
        window = saved.get("window") or {}
        # A window saved by another number of processes cannot be split again: it starts afresh.
        same_world = len(window.get("loss_sums", [])) == world
        return cls(step=saved["step"], wall_before_s=saved["wall_time_s"],
                   window_steps=window.get("steps", 0) if same_world else 0,
                   window_loss_sums=window.get("loss_sums", []) if same_world else [])


def model_config_for(cfg: RunConfig, meta: dict) -> ModelConfig:
    # The embedding table is padded to a multiple of 64 (GPT-2's 50257 -> 50304) for fast matmuls.
    vocab = -(-meta["vocab_size"] // 64) * 64
    model_cfg = resolve_model_config(dataclasses.asdict(cfg.model), vocab_size=vocab)
    check_vocab(meta, model_cfg.vocab_size)  # the rest of the model config: check_model_and_routing
    return model_cfg


class Trainer:
    """One training run. `dry_run()` or `fit()` after construction.

    Two model handles: `model` trains (wrapped by accelerate, compiled, or sharded by FSDP2) and
    `whole` is the whole, unwrapped model that spectra and QA read on the main process.
    """

    def __init__(self, start: Start, accelerator: Accelerator, run: RunDir):
        self.cfg = cfg = start.cfg
        self.accelerator = acc = accelerator
        self.is_main = acc.is_main_process
        self.rank, self.world = acc.process_index, acc.num_processes
        self.sharded = fsdp_requested(cfg.train.fsdp) and self.world > 1  # one process: nothing to shard
        self.run = run
        self.plan = BatchPlan.of(cfg.train.batch_size, cfg.train.micro_batch_size, self.world)
        self.cadence = Cadence(cfg.train, cfg.metrics)
        self.schedule = schedule_of(cfg)
        self.data = prepare_data(dataclasses.asdict(cfg.data), acc.main_process_first())
        self.meta = self.data.load_meta()
        self.model_cfg = model_config_for(cfg, self.meta)
        set_seed(cfg.train.seed)
        self.model: nn.Module = Transformer(self.model_cfg)
        self.route = route_config(self.model, cfg.optim)  # validated here; the optimizer is built by fit()
        self.routing = routing_json(self.route)
        self.resume_from = start.checkpoint
        self.extended_from = start.extended_from  # recorded in the run's extension history
        self.evaluator = self._evaluator()
        self.qa = QAEval.for_dataset(self.meta, self.data.path, cfg.metrics, acc.device)
        self.flops_per_token = flops_per_token(self.model_cfg, cfg.train.seq_len)
        device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        self.peak_flops = peak_flops(device_name, override=cfg.metrics.peak_flops)
        self.tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
        # Set up by fit():
        self.optimizer: CombinedOptimizer | None = None  # built once, on the model that trains
        self.whole = WholeModel(None)
        self.train_forward: nn.Module = self.model  # compiled by _wrap_model when train.compile
        self.logger: MetricsLogger | None = None
        self.loader: TokenLoader | None = None
        self.state = LoopState()
        self.run_start = 0.0  # perf_counter() at the start of the run, earlier attempts included
        self.stop = StopSignals()

    @property
    def mode(self) -> str:
        """How the processes share the work: single, DDP or FSDP2."""
        return "FSDP2" if self.sharded else "DDP" if self.world > 1 else "single"

    def start_line(self) -> str:
        return (f"{self.run.path}: {self.world} process{'es' if self.world > 1 else ''} ({self.mode}) on "
                f"{device_label(self.accelerator.device)}, {self.cfg.train.steps} steps")

    def dry_run(self, out: Path | None = None) -> None:
        """Print the routing table; write it as JSON (routing.json's format) to `out` if given. Nothing is
        written under the run directory: a dry run leaves no run-looking directory behind."""
        if self.is_main:
            print(format_routing_table(self.route))
            print(f"the run would go to {self.run.path}")
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                write_json(out, self.routing)
                print(f"routing table written to {out}")

    def fit(self) -> dict:
        """Train to `train.steps` (resuming if a checkpoint is there); returns the summary."""
        cfg, acc = self.cfg, self.accelerator
        self._start_run_dir()
        self._wrap_model()
        acc.register_for_checkpointing(WholeOptimizerState(self.optimizer))
        if self.resume_from is not None:
            self.state = LoopState.from_checkpoint(load_checkpoint(acc, self.resume_from), self.world)
            if self.is_main:
                self.run.truncate_metrics(self.state.step)
                print(f"resuming {self.run.path} from {self.resume_from.name}")
        start = self.state.step
        self.logger = MetricsLogger(acc, self.run, cfg, self.routing, fresh=start == 0,
                                    tokens_per_step=self.tokens_per_step)
        self.loader = TokenLoader(self.data.path, "train", cfg.train.seq_len, cfg.train.batch_size,
                                  cfg.train.seed, rank=self.rank, world_size=self.world,
                                  aligned=cfg.data.bos_aligned)
        self.run_start = time.perf_counter() - self.state.wall_before_s
        with self.stop:
            if start == 0:
                self._evaluate(0, self.cadence.at(0))
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
            run = self.run
            run.path.mkdir(parents=True, exist_ok=True)
            write_text(run.config, config_yaml(self.cfg))
            write_json(run.routing, self.routing)
            # Self-contained: export, evaluation and resume need nothing from the data cache.
            write_bytes(run.tokenizer, self.data.tokenizer.read_bytes())
            write_json(run.data_manifest, self.meta)
            run.summary.unlink(missing_ok=True)
            run.stop_marker.unlink(missing_ok=True)
            run.divergence_marker.unlink(missing_ok=True)
            if self.resume_from is None:
                run.metrics.unlink(missing_ok=True)
                run.extensions.unlink(missing_ok=True)
                shutil.rmtree(run.checkpoints_root, ignore_errors=True)
            else:  # an extension restarts from an earlier checkpoint: the later ones are of the old schedule
                if self.extended_from is not None:
                    run.record_extension(self.extended_from, self.cfg.train.steps, self.resume_from)
                start = checkpoint_step(self.resume_from)
                for ckpt in run.checkpoints():
                    if checkpoint_step(ckpt) > start:
                        shutil.rmtree(ckpt)
        self.accelerator.wait_for_everyone()

    def _wrap_model(self) -> None:
        """Make `model` the one that trains (prepared or sharded), `train_forward` its forward (compiled
        when train.compile) and `whole` the one read whole.

        Only the training step runs the compiled forward: evaluation and QA run `model` itself, at
        other shapes and under no_grad, where the compiled one would recompile. Checkpoints hold the
        unwrapped weights whatever wraps them, so a run resumes with train.compile toggled.

        The optimizer is built here, once, on the parameters that train: the model's own (before a DDP
        wrapper renames them), or under FSDP2 the sharded model's DTensors that fully_shard puts in their
        place; the main process then keeps a whole copy for spectra and QA when they are on.
        """
        cfg, acc = self.cfg, self.accelerator
        if not self.sharded:
            self.optimizer = build_optimizer(self.model, cfg.optim)
            # Compiled after prepare (DDP, autocast), as accelerate's own dynamo_backend does.
            self.model = acc.prepare(self.model)
            self.whole = WholeModel(acc.unwrap_model(self.model))
            checkpoint_unwrapped_weights(acc, self.whole.module)
        else:
            metrics = cfg.metrics
            needs_whole = metrics.spectra_every != 0 or bool(metrics.curvature_every) or self.qa is not None
            whole = WholeModel.copy_for(self.model, acc) if needs_whole else WholeModel(None)
            sharded = autocast_forward(shard_model(self.model, acc.device, self.world), acc)
            self.optimizer = build_optimizer(sharded, cfg.optim)
            checkpoint_whole_weights(acc, sharded)
            self.model = sharded
            if needs_whole:
                whole.sharded = sharded
            self.whole = whole
            if self.is_main:
                print(f"FSDP2: weights, gradients and optimizer state sharded over {self.world} processes")
        self.train_forward = torch.compile(self.model) if cfg.train.compile else self.model

    def _evaluator(self) -> Evaluator | None:
        """Validation loss and tail buckets on this process's validation rows (None: no validation split)."""
        cfg = self.cfg
        if not self.meta["val_tokens"]:
            if cfg.metrics.curvature_every:
                raise ConfigError("metrics.curvature_every needs a validation split for its fixed batch, and "
                                  f"{self.data.path} has none; set metrics.curvature_every=0 or prepare the "
                                  "data with validation tokens (data.val_tokens)")
            return None
        val_rows = list(val_batches(self.data.path, cfg.train.seq_len, cfg.train.eval_tokens,
                                    cfg.train.batch_size, self.rank, self.world,
                                    micro_batch_size=self.plan.micro))
        return Evaluator(self.accelerator, val_rows, self.data.counts(), cfg.metrics.tail_buckets,
                         cfg.metrics.tail_mode)

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self, start: int) -> None:
        steps, state = self.cfg.train.steps, self.state
        loss_sum = torch.zeros((), device=self.accelerator.device)
        if state.window_steps:  # a window left open by a stop
            loss_sum.fill_(state.window_loss_sums[self.rank])
        window_steps = state.window_steps
        timer = StepTimer(functools.partial(synchronize, self.accelerator.device))
        # Closed however the loop ends (an error line then starts on a line of its own).
        with tqdm(total=steps, initial=start, disable=not self.is_main, desc="train", unit="step",
                  dynamic_ncols=True) as bar:
            for step in range(start, steps):
                done = step + 1
                due = self.cadence.at(done)
                grad_norm, before = self._step(step, loss_sum, snapshot=due.spectra or due.curvature)
                state.step, window_steps = done, window_steps + 1
                timer.step()
                bar.update(1)
                if due.log:
                    tok_s = timer.read(self.tokens_per_step)
                    self._log_train(done, loss_sum / window_steps, grad_norm, tok_s)
                    bar.set_postfix(loss=f"{state.train_loss:.3f}", eval=f"{state.eval_loss:.3f}",
                                    tok_s=f"{tok_s:,.0f}")
                    loss_sum.zero_()
                    window_steps = 0
                timer.pause()  # evaluations and checkpoints are not training throughput
                if due.eval:
                    self._evaluate(done, due, before)
                if due.checkpoint:
                    self._checkpoint()
                if done < steps and self.stop.agreed(self.accelerator):
                    bar.close()
                    self._stop(loss_sum, window_steps, checkpointed=due.checkpoint)
                timer.resume()

    def _step(self, step: int, loss_sum: torch.Tensor,
              snapshot: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """One optimizer step on the global batch at `step`; adds its loss to `loss_sum` (no sync).

        Returns the gradient norm and, with `snapshot`, on the main process, the hidden weights from
        before the update (else None): this step's evaluation reads the update from them
        (`spectra_update/*`, `curvature/*`).
        """
        cfg, acc, plan = self.cfg, self.accelerator, self.plan
        mult = self.schedule.multiplier(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * mult
        batch = self.loader.batch(step)
        if acc.device.type == "cuda":
            batch = batch.pin_memory()
        for i, rows in enumerate(batch.split(plan.micro)):
            rows = rows.to(acc.device, non_blocking=True)
            # Gradients are all-reduced only on the last micro-batch of the step.
            with acc.no_sync(self.model) if i < plan.accum - 1 else nullcontext():
                loss = self.train_forward(rows[:, :-1], rows[:, 1:]) / plan.accum  # fused head + loss
                acc.backward(loss)
            loss_sum += loss.detach()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip)
        before = None
        if snapshot:
            self.whole.refresh()
            if self.is_main:
                before = snapshot_weights(self.whole.module)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, before

    def _log_train(self, step: int, mean_loss: torch.Tensor, grad_norm: torch.Tensor, tok_s: float) -> None:
        # The only host-device synchronisation of the loop: at logging and checkpoint steps.
        self.state.train_loss = self.accelerator.reduce(mean_loss, reduction="mean").item()
        if not math.isfinite(self.state.train_loss):
            good = self.run.latest_checkpoint()
            if self.is_main:  # evidence for the grid runner: a diverged run is an outcome, not a crash
                write_json(self.run.divergence_marker, {"step": step, "loss": str(self.state.train_loss)})
            raise NonFiniteLossError(
                f"training loss is {self.state.train_loss} at step {step}; last good checkpoint: "
                f"{good or 'none'}. Lower optim.adamw_lr/optim.muon_lr or set optim.grad_clip, then rerun "
                "(train.resume=auto)")
        metrics = {TRAIN_LOSS: self.state.train_loss, "train/lr": self.optimizer.param_groups[0]["lr"],
                   "train/grad_norm": grad_norm.item(), "perf/tokens_per_s": tok_s}
        if (u := mfu(tok_s, self.flops_per_token, self.world, self.peak_flops)) is not None:
            metrics["perf/mfu"] = u
        self.logger.log(metrics, step)

    def _evaluate(self, step: int, due: Due, before: dict[str, torch.Tensor] | None = None) -> None:
        """Validation loss and tail buckets on every process; spectra and QA, when due, on the main one.

        `before`: the weights from before the last step's update (`_step`'s snapshot; None at step 0)."""
        self.whole.refresh()
        metrics = self.evaluator.loss_and_tail(self.model) if self.evaluator else {}
        whole = self.whole.module
        if self.is_main and due.spectra:
            metrics.update(model_spectra(whole))
            if before is not None:  # the last step's update (none before the first step)
                metrics.update(update_spectra(before, whole))
        if self.is_main and due.curvature and before is not None:
            metrics.update(self._curvature(whole, before))
        if self.is_main and self.qa is not None and due.qa:
            metrics.update(self.qa(whole))
        self.state.eval_loss = metrics.get(EVAL_LOSS, self.state.eval_loss)
        self.logger.log(metrics, step)

    def _curvature(self, whole: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
        """`curvature/<group>/*` of the update from `before` to `whole` on the fixed validation batch (main
        process)."""
        rows = self.evaluator.fixed_batch().to(self.accelerator.device)
        params = dict(whole.named_parameters())
        update = {name: params[name].detach() - old for name, old in before.items()}
        return curvature_metrics(whole, rows[:, :-1], rows[:, 1:], update,
                                 {name: group_of(name) for name in update})

    def _stop(self, loss_sum: torch.Tensor, window_steps: int, checkpointed: bool) -> None:
        """Checkpoint here (with the open logging window) and raise Stopped."""
        if not checkpointed:
            sums = self.accelerator.gather(loss_sum.reshape(1)).tolist()
            self.state.window_steps, self.state.window_loss_sums = window_steps, sums
            self._checkpoint()
        stopped = Stopped(self.state.step, str(self.run.checkpoint(self.state.step)))
        if self.is_main:  # launcher-independent evidence for the grid runner and the sbatch script
            write_json(self.run.stop_marker, {"step": stopped.step, "checkpoint": stopped.checkpoint,
                                              "signal": self.stop.requested})
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        raise stopped

    def _checkpoint(self) -> None:
        wall = time.perf_counter() - self.run_start
        loop_state = self.state.checkpoint_state(self.tokens_per_step, wall)
        keep = self.cfg.train.keep_checkpoints
        with checkpoint_write_errors(self.run.checkpoint(self.state.step)):
            save_checkpoint(self.accelerator, self.run, self.state.step, loop_state, keep)
        self.state.window_steps, self.state.window_loss_sums = 0, []

    def _finish(self, start: int) -> dict:
        cfg = self.cfg.train
        wall = time.perf_counter() - self.run_start
        this_attempt_s = wall - self.state.wall_before_s
        # This attempt's speed; a resumed attempt with no step left reports the whole run's.
        tokens_per_s = ((cfg.steps - start) * self.tokens_per_step / this_attempt_s if cfg.steps > start
                        else cfg.steps * self.tokens_per_step / wall)
        summary = {
            "run": run_name(self.cfg), "processes": self.world, "mode": self.mode,
            "device": device_label(self.accelerator.device), "steps": cfg.steps,
            "tokens": cfg.steps * self.tokens_per_step, "wall_time_s": wall, "tokens_per_s": tokens_per_s,
        }
        if self.is_main:
            # The final figures as logged (also by earlier attempts), never from an empty window.
            events = list(self.run.events())
            train = [e for e in events if e.get(TRAIN_LOSS) is not None]
            evals = [e for e in events if EVAL_LOSS in e or QA_TAIL in e]
            last_eval = {k: v for k, v in (evals[-1] if evals else {}).items() if k != "step"}
            summary |= {
                FINAL_TRAIN_LOSS: train[-1][TRAIN_LOSS] if train else None,
                FINAL_EVAL_LOSS: last_eval.get(EVAL_LOSS),
                **{k: v for k, v in last_eval.items() if "/layer" not in k},
                "initial/eval_loss": next((e[EVAL_LOSS] for e in evals if EVAL_LOSS in e), None),
            }
            write_summary(self.run, summary)
            print_summary(self.run.path, summary)
        # Finishes the trackers and destroys the process group: a gloo/NCCL group left alive at exit
        # can abort a rank ("terminate called without an active exception").
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return summary


def train(cfg: RunConfig, dry_run: bool = False, out: Path | None = None) -> dict | None:
    """Run (or, with dry_run, only build and print, writing the routing to `out` if given) the training
    job described by `cfg`.

    A run that already finished with this config is left as it is: its summary is returned. A
    signal stops the run after a checkpoint and raises `Stopped`.
    """
    check_model_and_routing(cfg)  # cheap checks before any data is prepared
    accelerator = make_accelerator(cfg.train.precision, cfg.logging.wandb)
    run = RunDir(run_dir(cfg))
    # One process trains a run: a second start is refused before it reads or writes anything.
    with nullcontext() if dry_run else run_lock(run, accelerator):
        return _train(cfg, accelerator, run, dry_run, out)


def _train(cfg: RunConfig, accelerator: Accelerator, run: RunDir, dry_run: bool,
           out: Path | None) -> dict | None:
    start = plan_start(cfg, run)
    if start.complete and not dry_run:
        if accelerator.is_main_process:
            how = f"extended to {start.extended_to}" if start.extended_to else f"{run.summary.name} written"
            print(f"{run.path} is complete ({how}); nothing to do. "
                  "Use train.extend_to=N to continue it, or another run.name/run.dir for a new run")
        accelerator.end_training()
        return run.read_summary()
    trainer = Trainer(start, accelerator, run)
    if dry_run:
        trainer.dry_run(out)
        return None
    if trainer.is_main:
        for line in start.rejected:
            print(f"warning: {line}", file=sys.stderr)
        extending = f" (extending from {start.checkpoint.name})" if start.extending else ""
        print(trainer.start_line() + extending)
    return trainer.fit()


def check_model_and_routing(cfg: RunConfig) -> None:
    """The model config and the routing spec, checked on a meta-device model (no memory, no data)."""
    model = meta_model(cfg)
    if cfg.train.seq_len > model.config.max_seq_len:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds model.max_seq_len="
                          f"{model.config.max_seq_len}; lower train.seq_len or raise model.max_seq_len")
    route_config(model, cfg.optim)


def device_label(device: torch.device) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
