"""The training loop: config -> data -> model -> optimizer -> accelerate loop -> logs, checkpoints.

One optimizer step consumes one global batch of `train.batch_size` sequences, split evenly over
the processes and, within a process, into micro-batches of `train.micro_batch_size` with gradient
accumulation. The loader's batch at step s is a pure function of (seed, s), so a resumed run and
a run on any number of processes see the same data in the same order.
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
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from data.loader import TokenLoader, check_vocab, val_batches
from data.prepare import ensure_prepared
from metrics.spectra import model_spectra
from metrics.throughput import flops_per_token, mfu, peak_flops
from model import Transformer
from model.presets import resolve_model_config
from optim.build import build_optimizer
from optim.groups import format_routing_table, routing_json
from optim.schedules import lr_multiplier
from training.batching import BatchPlan
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import ConfigError, resume_conflicts, run_dir, run_name
from training.evaluate import Evaluator
from training.logger import MetricsLogger, truncate_after
from training.qa_eval import QAEval
from training.summary import print_summary, write_summary


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


def train(cfg: DictConfig, dry_run: bool = False) -> dict | None:
    """Run (or, with dry_run, only build and print) the training job described by `cfg`."""
    accelerator = make_accelerator(cfg)
    is_main = accelerator.is_main_process
    out_dir = run_dir(cfg)
    plan = BatchPlan.of(cfg.train.batch_size, cfg.train.micro_batch_size, accelerator.num_processes)

    with accelerator.main_process_first():
        data_dir = ensure_prepared(
            cfg.data.source, cfg.data.dir, vocab_size=cfg.data.vocab_size, tokenizer=cfg.data.tokenizer,
            tokens=cfg.data.tokens, val_tokens=cfg.data.val_tokens, text_field=cfg.data.text_field,
            bios=OmegaConf.to_container(cfg.data.bios))
    meta = json.loads((data_dir / "meta.json").read_text())
    # The embedding table is padded to a multiple of 64 (GPT-2's 50257 -> 50304) for fast matmuls.
    vocab = -(-meta["vocab_size"] // 64) * 64
    model_cfg = resolve_model_config(OmegaConf.to_container(cfg.model), vocab_size=vocab)
    check_vocab(meta, model_cfg.vocab_size)
    if cfg.train.seq_len > model_cfg.max_seq_len:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds model.max_seq_len="
                          f"{model_cfg.max_seq_len}; lower train.seq_len or raise model.max_seq_len")

    set_seed(cfg.train.seed)
    model = Transformer(model_cfg)
    optimizer = build_optimizer(model, cfg.optim)
    routing = routing_json(optimizer.routing)
    if dry_run:
        if is_main:
            print(format_routing_table(optimizer.routing))
            out_dir.mkdir(parents=True, exist_ok=True)
            _write_json(out_dir / "routing.json", routing)
            print(f"routing table written to {out_dir / 'routing.json'}")
        return None

    start_step, loop_state, ckpt = 0, {"tokens": 0, "wall_time_s": 0.0}, _find_resume(cfg, out_dir)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml")
        _write_json(out_dir / "routing.json", routing)
        (out_dir / "summary.json").unlink(missing_ok=True)
        if ckpt is None:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()

    if cfg.train.compile:
        model = torch.compile(model)
    model = accelerator.prepare(model)
    accelerator.register_for_checkpointing(optimizer)
    if ckpt is not None:
        loop_state = load_checkpoint(accelerator, ckpt)
        start_step = loop_state["step"]
        if is_main:
            truncate_after(out_dir / "metrics.jsonl", start_step)
            print(f"resuming {out_dir} from {ckpt.name}")

    rank, world = accelerator.process_index, accelerator.num_processes
    loader = TokenLoader(data_dir, "train", cfg.train.seq_len, cfg.train.batch_size, cfg.train.seed,
                         rank=rank, world_size=world, aligned=cfg.data.bos_aligned)
    val_rows = list(val_batches(data_dir, cfg.train.seq_len, cfg.train.eval_tokens, cfg.train.batch_size,
                                rank, world, micro_batch_size=plan.micro))
    evaluator = Evaluator(accelerator, val_rows, np.load(data_dir / "token_counts.npy"),
                          cfg.metrics.tail_buckets, cfg.metrics.tail_mode)
    qa = QAEval.for_dataset(meta, data_dir, cfg.metrics, accelerator.device)
    logger = MetricsLogger(accelerator, out_dir, cfg, run_name(cfg))
    logger.log_routing_table(routing)

    fpt = flops_per_token(model_cfg, cfg.train.seq_len)
    peak = peak_flops(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      override=cfg.metrics.peak_flops)
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    raw_model = accelerator.unwrap_model(model)
    last_eval: dict[str, float] = {}

    def run_eval(step: int) -> None:
        nonlocal last_eval
        metrics = evaluator.loss_and_tail(model)
        # Spectra and QA run on the main process only: they read the (replicated) weights.
        if is_main and _due(step, cfg.metrics.spectra_every, cfg.train.steps):
            metrics.update(model_spectra(raw_model))
        if is_main and qa is not None and _due(step, cfg.metrics.qa_every, cfg.train.steps):
            metrics.update(qa(raw_model))
        last_eval = metrics
        logger.log(metrics, step)

    if start_step == 0:
        run_eval(0)
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device)
    steps_in_window, window_start = 0, time.perf_counter()
    run_start = time.perf_counter() - loop_state["wall_time_s"]
    train_loss = float("nan")
    bar = tqdm(total=cfg.train.steps, initial=start_step, disable=not is_main, desc="train", unit="step",
               dynamic_ncols=True)
    for step in range(start_step, cfg.train.steps):
        mult = lr_multiplier(step, cfg.train.steps, cfg.optim.schedule, cfg.optim.warmup_steps,
                             cfg.optim.min_lr_ratio, cfg.optim.decay_fraction)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * mult
        batch = loader.batch(step)
        for i, rows in enumerate(batch.split(plan.micro)):
            rows = rows.to(accelerator.device, non_blocking=True)
            x, y = rows[:, :-1], rows[:, 1:]
            # Gradients are all-reduced only on the last micro-batch of the step.
            sync = accelerator.no_sync(model) if i < plan.accum - 1 else nullcontext()
            with sync:
                logits = model(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / plan.accum
                accelerator.backward(loss)
            loss_sum += loss.detach()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        steps_in_window += 1
        bar.update(1)

        checkpoint_due = (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0) \
            or done == cfg.train.steps
        if done % cfg.train.log_every == 0 or checkpoint_due:
            # The only host-device synchronisation of the loop: at logging and checkpoint steps.
            train_loss = accelerator.reduce(loss_sum, reduction="mean").item() / steps_in_window
            if not math.isfinite(train_loss):
                good = latest_checkpoint(out_dir)
                raise NonFiniteLossError(
                    f"training loss is {train_loss} at step {done}; last good checkpoint: "
                    f"{good or 'none'}. Lower optim.adamw_lr/optim.muon_lr or set optim.grad_clip, "
                    "then rerun with train.resume=auto")
            elapsed = time.perf_counter() - window_start
            tok_s = tokens_per_step * steps_in_window / elapsed
            metrics = {"train/loss": train_loss, "train/lr": optimizer.param_groups[0]["lr"],
                       "train/grad_norm": grad_norm.item(), "perf/tokens_per_s": tok_s}
            if (u := mfu(tok_s, fpt, world, peak)) is not None:
                metrics["perf/mfu"] = u
            logger.log(metrics, done)
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}")
            loss_sum.zero_()
            steps_in_window, window_start = 0, time.perf_counter()
        if cfg.train.eval_every and done % cfg.train.eval_every == 0 or done == cfg.train.steps:
            run_eval(done)
        if checkpoint_due:
            state = {"step": done, "tokens": done * tokens_per_step,
                     "wall_time_s": time.perf_counter() - run_start}
            save_checkpoint(accelerator, out_dir, done, state, cfg.train.keep_checkpoints)
    bar.close()

    wall = time.perf_counter() - run_start
    run_tokens = (cfg.train.steps - start_step) * tokens_per_step
    summary = {
        "run": run_name(cfg), "processes": world, "steps": cfg.train.steps,
        "tokens": cfg.train.steps * tokens_per_step, "wall_time_s": wall,
        "tokens_per_s": run_tokens / max(wall - loop_state["wall_time_s"], 1e-9),
        "final/train_loss": train_loss, "final/eval_loss": last_eval.get("eval/loss"),
        **{k: v for k, v in last_eval.items() if "/layer" not in k},
    }
    if is_main:
        summary["initial/eval_loss"] = _first_eval_loss(out_dir)
        write_summary(out_dir, summary)
        print_summary(out_dir, summary)
    logger.close()
    return summary


def _find_resume(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from, after checking that it belongs to the same experiment."""
    mode = cfg.train.resume
    if mode == "none":
        if (out_dir / "checkpoints").is_dir() and latest_checkpoint(out_dir):
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


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
