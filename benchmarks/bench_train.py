"""Train-step throughput and peak memory: muonlab's Transformer vs transformers' LlamaForCausalLM.

A train step is forward, cross-entropy, backward, optimizer step and zero_grad. Both models have the
same config and weights (the Llama twin comes from `model.hf.to_hf`, with SDPA attention and no KV
cache), the same batch, dtype and optimizer: muonlab's `build_optimizer` with every parameter on
AdamW (`optim.muon=none`, isolates the model) and with Muon on the hidden matrices (`optim.muon=hidden`,
the default training setup). The models' steps alternate, so background load hits both alike. The
process keeps freed memory in-process as train.py does (`training.runtime.keep_freed_memory`; it
applies to both models) unless `--default-malloc` is given.

    python -m benchmarks.bench_train [--presets tiny,small,gpt2-160m] [--batch B] [--seq T]
        [--steps N] [--compile] [--modes eager,compiled] [--optims adamw,muon] [--dtype fp32|bf16]
        [--device cpu|cuda] [--threads N] [--default-malloc]
        [--no-memory] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from benchmarks.common import (
    PeakMemory,
    default_device,
    describe_environment,
    device_name,
    environment,
    format_bytes,
    load_warning,
    median,
    print_table,
    run_in_fresh_process,
    split_choices,
    time_interleaved,
    write_results,
)
from metrics.throughput import flops_per_token, mfu, peak_flops
from model import PRESETS, ModelConfig, Transformer, get_preset
from optim.build import build_optimizer
from optim.config import OptimConfig
from training.runtime import keep_freed_memory
from training.step_timer import synchronize

MODELS = ("muonlab", "llama")
# Benchmark optimizer name -> optim.muon routing spec given to build_optimizer.
OPTIMS = {"adamw": "none", "muon": "hidden"}
DTYPES = ("fp32", "bf16")
TARGET_RATIO = 1.3  # issue 5: muonlab's train step >= 1.3x Llama's tokens/s
DEFAULTS = {  # per device type: presets, batch, seq, steps, dtype
    "cpu": dict(presets="tiny,small", batch=8, seq=128, steps=8, dtype="fp32"),
    "cuda": dict(presets="tiny,small,gpt2-160m", batch=16, seq=1024, steps=20, dtype="bf16"),
}


@dataclass(frozen=True)
class Variant:
    """One contender: which model, which optimizer, eager or torch.compile'd."""

    model: str
    optim: str
    compiled: bool

    @property
    def mode(self) -> str:
        return "compiled" if self.compiled else "eager"

    @property
    def name(self) -> str:
        return f"{self.model}/{self.optim}/{self.mode}"


def bench_config(preset: str, seq_len: int) -> tuple[ModelConfig, str]:
    """The preset's ModelConfig made expressible by Llama, and a note saying what was changed.

    Llama's MLP is always gated, so a non-gated preset (gpt2-160m) is benchmarked as SwiGLU with
    2/3 of its FFN width (rounded to 64), which keeps the parameter count.
    """
    base = get_preset(preset)
    overrides: dict[str, Any] = {"max_seq_len": max(base.max_seq_len, seq_len)}
    note = ""
    if base.ffn_type != "swiglu":
        hidden = max(64, round(base.ffn_hidden * 2 / 3 / 64) * 64)
        overrides.update(ffn_type="swiglu", ffn_hidden=hidden)
        note = f"ffn_type={base.ffn_type} preset run as swiglu, ffn_hidden={hidden} (Llama is gated only)"
    return get_preset(preset, **overrides), note


def build_model(cfg: ModelConfig, kind: str, device: torch.device) -> nn.Module:
    """muonlab's Transformer (seed 0) or its LlamaForCausalLM twin with identical weights."""
    torch.manual_seed(0)
    net: nn.Module = Transformer(cfg)
    if kind == "llama":
        from model.hf import to_hf  # imports transformers; muonlab-only memory probes skip it

        net = to_hf(net)
        net.set_attn_implementation("sdpa")  # the fastest Llama attention on CPU and a fair GPU peer
    elif kind != "muonlab":
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(MODELS)}")
    return net.to(device).train()


class TrainStep:
    """A callable doing one full train step of a variant on a fixed batch."""

    def __init__(self, variant: Variant, cfg: ModelConfig, batch: torch.Tensor, dtype: str) -> None:
        device = batch.device
        self.model = build_model(cfg, variant.model, device)
        optim_cfg = OmegaConf.structured(OptimConfig(muon=OPTIMS[variant.optim]))
        self.optimizer = build_optimizer(self.model, optim_cfg)
        self.forward = torch.compile(self.model) if variant.compiled else self.model
        self.is_llama = variant.model == "llama"
        self.inputs, self.targets = batch[:, :-1], batch[:, 1:]
        self.cpu_seconds: list[float] = []
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        )

    def loss(self) -> torch.Tensor:
        """Forward and the fp32 cross-entropy, each model its own way.

        muonlab as training/trainer.py calls it: model(inputs, targets), the fused head + loss of
        model/loss.py. Llama: its logits, then the loss transformers' own `loss_function` computes
        (upcast to fp32, cross-entropy).
        """
        with self.autocast:
            if not self.is_llama:
                return self.forward(self.inputs, self.targets)
            logits = self.forward(input_ids=self.inputs, use_cache=False).logits
        return F.cross_entropy(logits.float().flatten(0, 1), self.targets.flatten())

    def __call__(self) -> None:
        # Process CPU time too: unlike wall time it barely grows when other processes take the CPUs.
        start = time.process_time()
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.cpu_seconds.append(time.process_time() - start)


def sdpa_kernels(step: TrainStep) -> list[str]:
    """The scaled-dot-product-attention kernels (aten ops) one forward of a contender runs, e.g.
    `_scaled_dot_product_flash_attention`: under torch.compile transformers' Llama keeps an explicit
    causal mask with torch < 2.14, which rules flash attention out for it."""
    device = step.inputs.device
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, torch.no_grad():
        step.loss()
    synchronize(device)
    return sorted({e.key.removeprefix("aten::") for e in prof.key_averages()
                   if "scaled_dot_product" in e.key and e.key != "aten::scaled_dot_product_attention"})


def check_same_loss(steps: dict[str, TrainStep], dtype: str) -> float:
    """The contenders start from identical weights, so their first losses must agree; returns the loss.

    Guards the comparison: a Llama twin that computed something else would make the timing meaningless.
    """
    losses = {name: step.loss().item() for name, step in steps.items()}
    ref = next(iter(losses.values()))
    tol = (2e-2 if dtype == "bf16" else 1e-4) * abs(ref)
    if max(abs(loss - ref) for loss in losses.values()) > tol:
        raise RuntimeError(f"the contenders' initial losses differ beyond {tol:.2g}: {losses}")
    return ref


def make_batch(cfg: ModelConfig, batch_size: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Random token ids [batch_size, seq_len + 1] (inputs and shifted targets), the same for every variant."""
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), generator=gen).to(device)


def probe_memory(
    cfg: ModelConfig, variant: Variant, batch_size: int, seq_len: int, dtype: str, device: str, steps: int = 2
) -> int | None:
    """Peak train-step memory of a variant in bytes; call it in a fresh process.

    Parameters and buffers (counted exactly) plus the peak growth over `steps` train steps, which holds
    gradients, optimizer state, activations and temporaries. Building the model is not measured, so
    the transient copy `to_hf` makes and the import of transformers do not count against Llama.
    """
    dev = torch.device(device)
    step = TrainStep(variant, cfg, make_batch(cfg, batch_size, seq_len, dev), dtype)
    meter = PeakMemory(dev)
    meter.start()
    for _ in range(steps):
        step()
    growth = meter.peak()
    if growth is None:
        return None
    tensors = [*step.model.parameters(), *step.model.buffers()]
    return growth + sum(t.numel() * t.element_size() for t in tensors)


def bench_preset(preset: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Time every variant of one preset (interleaved) and measure their peak memory; one row each."""
    cfg, note = bench_config(preset, args.seq)
    batch = make_batch(cfg, args.batch, args.seq, device)
    tokens = args.batch * args.seq
    flops = flops_per_token(cfg, args.seq)  # PaLM accounting, as train.py's perf/mfu
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None  # the table is bf16 GPUs
    rows = []
    for compiled in (mode == "compiled" for mode in args.modes):
        variants = [Variant(m, o, compiled) for o in args.optims for m in MODELS]
        steps = {v.name: TrainStep(v, cfg, batch, args.dtype) for v in variants}
        initial_loss = check_same_loss(steps, args.dtype)
        params = {v.name: sum(p.numel() for p in steps[v.name].model.parameters()) for v in variants}
        warmup = 3 if compiled else 2  # first steps allocate optimizer state (and compile)
        times = time_interleaved(steps, args.steps, warmup, device, desc=f"{preset} {variants[0].mode}")
        cpu_times = {name: step.cpu_seconds[warmup:] for name, step in steps.items()}
        attention = {name: sdpa_kernels(step) for name, step in steps.items()}
        del steps  # free the models before the memory probes and the next mode
        for v in variants:
            seconds = median(times[v.name])
            memory = None
            # On CPU a compiled variant's peak RSS is dominated by the compiler itself: not reported.
            if args.memory and not (compiled and device.type == "cpu"):
                memory = run_in_fresh_process(
                    probe_memory, cfg, v, args.batch, args.seq, args.dtype, str(device)
                )
            rows.append({
                "preset": preset, **asdict(v), "mode": v.mode, "params": params[v.name],
                "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
                "ms_per_step": seconds * 1e3, "ms_min": min(times[v.name]) * 1e3,
                "cpu_ms_per_step": median(cpu_times[v.name]) * 1e3,
                "tokens_per_s": tokens / seconds, "model_flops_per_s": tokens / seconds * flops,
                "mfu": mfu(tokens / seconds, flops, 1, peak), "peak_memory_bytes": memory,
                "initial_loss": initial_loss, "attention": attention[v.name], "note": note,
            })
    for row in rows:
        peer = next(r for r in rows if r["model"] == "llama" and r["optim"] == row["optim"]
                    and r["mode"] == row["mode"])
        row["ratio_vs_llama"] = row["tokens_per_s"] / peer["tokens_per_s"]
        row["cpu_ratio_vs_llama"] = peer["cpu_ms_per_step"] / row["cpu_ms_per_step"]
    return rows


def summary_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per preset and mode: muonlab/Llama tokens/s with AdamW, against the target."""
    lines = []
    for row in rows:
        if row["model"] == "muonlab" and row["optim"] == "adamw":
            ok = "met" if row["ratio_vs_llama"] >= TARGET_RATIO else "NOT met"
            muon = next((r for r in rows if r["preset"] == row["preset"] and r["mode"] == row["mode"]
                         and r["model"] == "muonlab" and r["optim"] == "muon"), None)
            line = (f"{row['preset']} {row['mode']}: muonlab {row['ratio_vs_llama']:.2f}x Llama's tokens/s "
                    f"(target >= {TARGET_RATIO}x: {ok}; by CPU time {row['cpu_ratio_vs_llama']:.2f}x)")
            if muon is not None:
                line += (f"; with Muon on hidden matrices {muon['tokens_per_s']:,.0f} tok/s = "
                         f"{muon['tokens_per_s'] / row['tokens_per_s']:.2f}x the AdamW step")
            lines.append(line)
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--presets", help="comma list of model presets (CPU: tiny,small; CUDA: + gpt2-160m)")
    parser.add_argument("--batch", type=int, help="sequences per step (CPU 8, CUDA 16)")
    parser.add_argument("--seq", type=int, help="sequence length (CPU 128, CUDA 1024)")
    parser.add_argument("--steps", type=int, help="timed steps per variant (CPU 8, CUDA 20)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--modes", help="comma list of eager, compiled (default: eager; both with --compile)")
    parser.add_argument("--optims", help=f"comma list of {', '.join(OPTIMS)} (default: all)")
    parser.add_argument("--dtype", choices=DTYPES, help="fp32, or bf16 autocast (CPU fp32, CUDA bf16)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--default-malloc", dest="keep_freed_memory", action="store_false",
                        help="skip train.py's glibc setting that keeps freed memory in-process (both models)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak-memory probes")
    parser.add_argument("--out", help="JSON output (default benchmarks/results/bench_train_<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine; drop --device or use cpu")
    device = torch.device(args.device) if args.device else default_device()
    for key, value in DEFAULTS[device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    for key in ("batch", "seq", "steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be a positive integer, got {getattr(args, key)}")
    args.device = device
    modes = args.modes or ("eager,compiled" if args.compile else "eager")
    args.modes = split_choices(parser, "--modes", modes, ("eager", "compiled"))
    args.optims = split_choices(parser, "--optims", args.optims or ",".join(OPTIMS), tuple(OPTIMS))
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # this benchmark process only (the memory probes keep theirs)
    if args.keep_freed_memory:
        keep_freed_memory()  # as train.py does; process-wide, so it applies to both models alike
    env = environment(device)
    rows = [row for preset in args.presets for row in bench_preset(preset, args, device)]
    settings = {k: v for k, v in vars(args).items() if k != "device"}
    path = write_results(
        "bench_train",
        {"environment": env, "settings": settings, "llama": "LlamaForCausalLM, sdpa, use_cache=False",
         "rows": rows},
        args.out,
    )
    print_table(
        f"train step, batch {args.batch} x seq {args.seq}, {args.dtype} — {describe_environment(env)}",
        ["preset", "mode", "optim", "model", "params", "ms/step", "tokens/s", "GFLOP/s", "MFU", "peak mem",
         "vs Llama", "CPU ms/step", "vs Llama (CPU time)", "attention kernel"],
        [[r["preset"], r["mode"], r["optim"], r["model"], f"{r['params'] / 1e6:.1f}M",
          f"{r['ms_per_step']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{r['model_flops_per_s'] / 1e9:,.1f}",
          "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}", format_bytes(r["peak_memory_bytes"]),
          f"{r['ratio_vs_llama']:.2f}x", f"{r['cpu_ms_per_step']:.1f}", f"{r['cpu_ratio_vs_llama']:.2f}x",
          ", ".join(r["attention"]) or "none seen"]
         for r in rows],
    )
    for note in sorted({r["note"] for r in rows if r["note"]}):
        print(f"note: {note}")
    for line in summary_lines(rows):
        print(line)
    warning = load_warning(env)
    if warning:
        print(warning)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
