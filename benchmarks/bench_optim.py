"""Optimizer-step benchmark: muonlab's Muon vs torch.optim.Muon vs AdamW, Muon's share of a train step,
and the Newton–Schulz (NS) work per rank when Muon is shared across 1, 2, ... CPU processes (gloo),
with the matrices replicated (DDP) or sharded by rows (FSDP2).

1. step: one optimizer step on the preset's hidden matrices (q, k, v, o, FFN), same gradients for
   every contender, same Muon settings (lr 0.02, match_rms_adamw), timed interleaved.
2. share: a full train step (forward, backward, both optimizer parts) with `build_optimizer`
   (Muon on the hidden matrices, AdamW elsewhere) and the part of it spent in the Muon step.
3. dist: per world size, every rank runs real (distributed) Muon steps in each mode of `--modes`
   and times, inside them, (a) its calls of orthogonalize (the NS compute per rank), (b) the NS work
   with the collective that shares it, (c) the whole Muon step, and counts the bytes it sends to
   and receives from the other ranks through that collective. Modes: `ddp`, every rank holds the
   whole matrices (as under DDP), orthogonalizes its share of each bucket and an all_gather shares
   the results; `fsdp2`, every rank holds its rows of each matrix (DTensors sharded by rows, as
   `fully_shard` leaves them), each matrix's owner orthogonalizes it whole and all_to_all_single
   moves the rows to the owner and back. The modes alternate step by step in the same processes,
   so background load hits both alike. Every rank runs `--threads-per-rank` threads at every world
   size, so the ratios show the work sharing, not a change of thread count. Wall and CPU (process)
   time are both recorded: on a loaded machine the CPU time measures the work, the wall time also
   the wait for a core.

Every process keeps freed memory in-process as train.py does (`training.runtime.keep_freed_memory`,
applied to all contenders alike): without it, the large temporaries of a step are page-faulted in
again every step, which made muonlab's stacked buckets look 1.4x slower than they are in training.

muonlab's Newton–Schulz dtype follows the hardware (bf16 on CUDA and on CPUs with native bf16
matmul, fp32 elsewhere); torch.optim.Muon always uses bf16. To see a CPU without native bf16 on one
that has it, run with ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN then emulates bf16, as on an AVX2-only CPU).

    python -m benchmarks.bench_optim [--preset tiny] [--rounds N] [--batch B] [--seq T] [--threads N]
        [--ranks 1,2] [--modes ddp,fsdp2] [--threads-per-rank T] [--device cpu|cuda] [--skip-dist]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from accelerate.utils.other import get_free_port
from omegaconf import OmegaConf
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from benchmarks.common import (
    default_device,
    describe_environment,
    environment,
    median,
    print_table,
    time_interleaved,
    write_results,
)
from model import PRESETS, Transformer, get_preset
from optim import dist_muon, newton_schulz
from optim.build import build_optimizer
from optim.config import OptimConfig
from optim.groups import ALIASES, group_of
from optim.muon import Muon
from optim.newton_schulz import default_ns_dtype
from training.runtime import keep_freed_memory
from training.step_timer import synchronize

MUON_KW = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw")
TARGET_SPEEDUP = 10.0  # issue 5: muonlab's Muon step >= 10x torch.optim.Muon's on CPU
TARGET_NS_RATIO = 0.6  # issue 5: at 2 ranks each rank's NS time <= 0.6x the 1-rank time
# distributed layouts: mode -> (the collective that shares the NS work, the Muon method doing NS + it)
MODES = {"ddp": ("all_gather", "_orthogonalize_buckets"),
         "fsdp2": ("all_to_all_single", "_row_sharded_updates")}
DEFAULTS = {  # per device type
    "cpu": dict(preset="tiny", rounds=5, batch=16, seq=128),
    "cuda": dict(preset="gpt2-160m", rounds=20, batch=16, seq=1024),
}


def hidden_matrices(preset: str, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """The preset's hidden matrices (the `hidden` routing group), each with a fixed random gradient."""
    torch.manual_seed(seed)
    model = Transformer(get_preset(preset))
    hidden = set(ALIASES["hidden"])
    mats = []
    for name, p in model.named_parameters():
        if group_of(name, p) in hidden:
            mat = p.detach().to(device).requires_grad_()
            mat.grad = torch.randn_like(mat)
            mats.append(mat)
    return mats


def step_contenders(mats: Sequence[torch.Tensor]) -> dict[str, Callable[[], None]]:
    """name -> one optimizer step, each contender on its own copy of the matrices and gradients."""

    def copies() -> list[torch.Tensor]:
        out = [m.detach().clone().requires_grad_() for m in mats]
        for c, m in zip(out, mats, strict=True):
            c.grad = m.grad.clone()
        return out

    optimizers = {
        "muonlab Muon": Muon(copies(), **MUON_KW),
        "torch.optim.Muon": torch.optim.Muon(copies(), **MUON_KW),
        "AdamW": torch.optim.AdamW(copies(), lr=3e-3, weight_decay=0.1, fused=True),  # as build_optimizer
    }
    return {name: opt.step for name, opt in optimizers.items()}


Timings = dict[str, list[float]]


def with_cpu_time(fns: dict[str, Callable[[], Any]], sink: Timings) -> dict[str, Callable[[], None]]:
    """Wrap each callable so that it also appends its process CPU time (s) to sink[name].

    On a shared, loaded machine wall time includes waiting for a core; CPU time measures the work
    (with one thread; with several, OpenMP's spinning counts too). Meaningless for CUDA work.
    """

    def wrap(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            start = time.process_time()
            fn()
            sink.setdefault(name, []).append(time.process_time() - start)

        return run

    return {name: wrap(name, fn) for name, fn in fns.items()}


def bench_step(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median wall and CPU step time of each contender on the preset's hidden matrices."""
    mats = hidden_matrices(args.preset, args.device)
    cpu: dict[str, list[float]] = {}
    fns = with_cpu_time(step_contenders(mats), cpu)
    wall = time_interleaved(fns, args.rounds, 1, args.device, desc="step")
    cpu = {name: t[1:] for name, t in cpu.items()}  # [0]: the warm-up round
    ref, ref_cpu = median(wall["torch.optim.Muon"]), median(cpu["torch.optim.Muon"])
    return [
        {"optimizer": name, "ms_per_step": median(wall[name]) * 1e3, "ms_min": min(wall[name]) * 1e3,
         "cpu_ms_per_step": median(cpu[name]) * 1e3, "speedup_vs_torch_muon": ref / median(wall[name]),
         "cpu_speedup_vs_torch_muon": ref_cpu / median(cpu[name]), "matrices": len(mats),
         "params": sum(m.numel() for m in mats)}
        for name in wall
    ]


def bench_share(args: argparse.Namespace) -> dict[str, Any]:
    """Train-step time and the part of it spent in the Muon step (muon=hidden, AdamW elsewhere)."""
    torch.manual_seed(0)
    cfg = get_preset(args.preset, max_seq_len=max(args.seq, get_preset(args.preset).max_seq_len))
    model = Transformer(cfg).to(args.device).train()
    opt = build_optimizer(model, OmegaConf.structured(OptimConfig(muon="hidden")))
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen).to(args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.type == "cuda")
    cpu: dict[str, list[float]] = {}

    def muon_step() -> None:
        opt.muon.step()
        synchronize(args.device)

    timed_muon = with_cpu_time({"muon": muon_step}, cpu)["muon"]
    muon_wall: list[float] = []

    def train_step() -> None:
        with autocast:
            logits = model(batch[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten()).backward()
        synchronize(args.device)
        start = time.perf_counter()
        timed_muon()
        muon_wall.append(time.perf_counter() - start)
        opt.base.step()
        opt.zero_grad(set_to_none=True)

    fns = with_cpu_time({"step": train_step}, cpu)
    wall = time_interleaved(fns, args.rounds, 1, args.device, desc="share")
    # [0] of the lists filled inside the step: the warm-up round
    step, muon = median(wall["step"]), median(muon_wall[1:])
    cpu_step, cpu_muon = median(cpu["step"][1:]), median(cpu["muon"][1:])
    return {"batch": args.batch, "seq": args.seq, "ms_train_step": step * 1e3, "ms_muon_step": muon * 1e3,
            "muon_share": muon / step, "cpu_ms_train_step": cpu_step * 1e3,
            "cpu_ms_muon_step": cpu_muon * 1e3, "cpu_muon_share": cpu_muon / cpu_step}


class _Clock:
    """Accumulates the wall and CPU time of the calls of the functions it wraps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.wall = self.cpu = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu
            return out

        return timed


def _all_gather_bytes(tensor_list: list[Tensor], tensor: Tensor, *args: Any, **kwargs: Any) -> int:
    """Bytes of an all_gather to and from the other ranks: this rank's tensor out to each, theirs in."""
    return 2 * (len(tensor_list) - 1) * tensor.numel() * tensor.element_size()


def _all_to_all_bytes(output: Tensor, input: Tensor, output_split_sizes: list[int],
                      input_split_sizes: list[int], group: dist.ProcessGroup | None = None,
                      **kwargs: Any) -> int:
    """Bytes of an all_to_all_single (1-D, explicit splits, as optim.dist_muon calls it) to and from
    the other ranks; the split a rank keeps is a local copy, not traffic."""
    rank = dist.get_rank(group)
    sent = sum(input_split_sizes) - input_split_sizes[rank]
    received = sum(output_split_sizes) - output_split_sizes[rank]
    return (sent + received) * output.element_size()


class _Traffic:
    """Accumulates the bytes of the collectives it wraps, each counted by its own function."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bytes = 0

    def wrap(self, fn: Callable[..., Any], count: Callable[..., int]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.bytes += count(*args, **kwargs)
            return fn(*args, **kwargs)

        return counted


def _mode_matrices(mode: str, preset: str, mesh: DeviceMesh) -> list[Tensor]:
    """The preset's hidden matrices with their gradients as `mode` holds them on this rank: whole
    (ddp), or its rows as DTensors sharded by rows over the 1-D mesh (fsdp2: fully_shard's layout)."""
    mats = hidden_matrices(preset, torch.device("cpu"))  # a fresh copy per mode: the steps update it
    if mode == "ddp":
        return mats

    def rows(t: Tensor) -> Tensor:  # every rank holds the same matrices: no scatter needed
        return distribute_tensor(t.detach(), mesh, [Shard(0)], src_data_rank=None)

    shards = [torch.nn.Parameter(rows(m)) for m in mats]
    for shard, m in zip(shards, mats, strict=True):
        shard.grad = rows(m.grad)
    return shards


def _dist_worker(rank: int, world_size: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One rank of the distributed benchmark: real Muon steps per mode, the NS calls inside them timed.

    The instrumentation wraps `orthogonalize` where Muon calls it (locally through
    optim.newton_schulz, shared through optim.dist_muon), each mode's NS + collective (a method of
    its optimizer), and the collectives themselves (bytes counted). The modes take turns, in an order
    that rotates from round to round. Writes the median per mode to out/rank<r>.pt.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    keep_freed_memory()
    torch.set_num_threads(args.threads_per_rank)  # the same threads per rank at every world size
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    mesh = init_device_mesh("cpu", (world_size,))
    ns, shared, traffic = _Clock(), _Clock(), _Traffic()
    newton_schulz.orthogonalize = dist_muon.orthogonalize = ns.wrap(newton_schulz.orthogonalize)
    dist.all_gather = traffic.wrap(dist.all_gather, _all_gather_bytes)
    dist.all_to_all_single = traffic.wrap(dist.all_to_all_single, _all_to_all_bytes)
    optimizers = {}
    for mode in args.modes:  # ddp: distributed at world_size > 1; fsdp2: DTensors, always by owner
        optimizers[mode] = Muon(_mode_matrices(mode, args.preset, mesh), **MUON_KW)
        method = MODES[mode][1]
        setattr(optimizers[mode], method, shared.wrap(getattr(optimizers[mode], method)))
    rounds: dict[str, dict[str, list[float]]] = {mode: {} for mode in args.modes}
    for r in range(args.rounds + 1):  # the first round warms up
        shift = r % len(args.modes)
        for mode in args.modes[shift:] + args.modes[:shift]:
            for counter in (ns, shared, traffic):
                counter.reset()
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            optimizers[mode].step()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            measured = {"ms Muon step": wall, "cpu ms Muon step": cpu,
                        "ms NS compute": ns.wall, "cpu ms NS compute": ns.cpu,
                        "ms NS + collective": shared.wall, "cpu ms NS + collective": shared.cpu}
            for key, value in measured.items():
                rounds[mode].setdefault(key, []).append(value * 1e3)
            rounds[mode].setdefault("bytes per step", []).append(traffic.bytes)
    torch.save({mode: {key: median(t[1:]) for key, t in times.items()} for mode, times in rounds.items()},
               Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def bench_dist(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per world size, rank and mode: median times of NS compute, NS + collective, the whole Muon step,
    and the bytes of the collective; each time also relative to the same mode at 1 rank."""
    rows = []
    for world_size in args.ranks:
        print(f"dist: {world_size} rank(s), {args.threads_per_rank} thread(s) each, "
              f"{' and '.join(args.modes)} ...", flush=True)
        with tempfile.TemporaryDirectory() as out:
            port = get_free_port()
            mp.spawn(_dist_worker, args=(world_size, port, args, out), nprocs=world_size, join=True)
            results = [torch.load(Path(out) / f"rank{r}.pt") for r in range(world_size)]
        for rank, per_mode in enumerate(results):
            rows += [{"world_size": world_size, "rank": rank, "mode": mode, "collective": MODES[mode][0],
                      "threads_per_rank": args.threads_per_rank, **times} for mode, times in per_mode.items()]
    for row in rows:
        one = next((r for r in rows if r["world_size"] == 1 and r["mode"] == row["mode"]), None)
        for key in [k for k in row if "ms " in k]:
            row[f"{key} vs 1 rank"] = row[key] / one[key] if one else None
    return rows


def _slowest(dist_rows: list[dict], world_size: int, mode: str, key: str) -> dict | None:
    """The row of the rank with the largest `key` at this world size and mode (None if not measured)."""
    return max((r for r in dist_rows if (r["world_size"], r["mode"]) == (world_size, mode)),
               key=lambda r: r[key], default=None)


def summary_lines(step_rows: list[dict], share: dict, dist_rows: list[dict], device: torch.device
                  ) -> list[str]:
    """The targets of issue 5, met or not, with the measured numbers (CPU time on CPU, else wall), and
    FSDP2's Muon step against DDP's."""
    cpu = "cpu_" if device.type == "cpu" else ""
    clock = "CPU time" if cpu else "wall time"
    ours = next(r for r in step_rows if r["optimizer"] == "muonlab Muon")
    adamw = next(r for r in step_rows if r["optimizer"] == "AdamW")
    speedup = ours[f"{cpu}speedup_vs_torch_muon"]
    target = f" (target >= {TARGET_SPEEDUP:.0f}x on CPU: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})"
    ms, vs_adamw = ours[f"{cpu}ms_per_step"], ours[f"{cpu}ms_per_step"] / adamw[f"{cpu}ms_per_step"]
    lines = [
        f"Muon step {ms:.1f} ms ({clock}) = {speedup:.1f}x faster than torch.optim.Muon"
        f"{target if cpu else ''}; {vs_adamw:.1f}x AdamW's step "
        f"(wall time: {ours['speedup_vs_torch_muon']:.1f}x torch.optim.Muon)",
        f"Muon step = {100 * share[f'{cpu}muon_share']:.1f}% of a train step ({clock}; "
        f"batch {share['batch']} x seq {share['seq']}: {share[f'{cpu}ms_train_step']:.0f} ms)",
    ]
    prefix = "cpu ms" if cpu else "ms"
    world_sizes = sorted({r["world_size"] for r in dist_rows})
    for world_size in [w for w in world_sizes if w > 1]:
        for mode in MODES:
            worst = _slowest(dist_rows, world_size, mode, f"{prefix} NS compute")
            if worst is None or worst[f"{prefix} NS compute vs 1 rank"] is None:
                continue  # the mode was not run, or not at 1 rank
            ratio = worst[f"{prefix} NS compute vs 1 rank"]
            ok = "met" if ratio <= TARGET_NS_RATIO else "NOT met"
            lines.append(
                f"{world_size} ranks, {mode}: slowest rank's NS compute = {ratio:.2f}x the 1-rank {clock} "
                f"(target <= {TARGET_NS_RATIO}x at 2 ranks: {ok}); NS with its {worst['collective']} "
                f"{worst[f'{prefix} NS + collective vs 1 rank']:.2f}x; whole Muon step "
                f"{worst[f'{prefix} Muon step vs 1 rank']:.2f}x (wall: NS "
                f"{worst['ms NS compute vs 1 rank']:.2f}x, step {worst['ms Muon step vs 1 rank']:.2f}x)"
            )
    for world_size in world_sizes:
        ddp, fsdp2 = (_slowest(dist_rows, world_size, mode, f"{prefix} Muon step") for mode in MODES)
        if ddp and fsdp2:
            step, ns = f"{prefix} Muon step", f"{prefix} NS compute"
            lines.append(
                f"{world_size} rank(s), fsdp2 vs ddp (slowest rank, {clock}): Muon step {fsdp2[step]:.1f} vs "
                f"{ddp[step]:.1f} ms ({fsdp2[step] / ddp[step]:.2f}x; wall "
                f"{fsdp2['ms Muon step'] / ddp['ms Muon step']:.2f}x), NS compute {fsdp2[ns]:.1f} vs "
                f"{ddp[ns]:.1f} ms; sent + received per rank and step {_mib(fsdp2['bytes per step'])} "
                f"({fsdp2['collective']}) vs {_mib(ddp['bytes per step'])} ({ddp['collective']})"
            )
    return lines


def _mib(n_bytes: float) -> str:
    """Bytes as MiB, e.g. '1.62 MiB'."""
    return f"{n_bytes / 2**20:.2f} MiB"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_optim",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--preset", help="model preset whose matrices are used (CPU tiny, CUDA gpt2-160m)")
    parser.add_argument("--rounds", type=int, help="timed rounds (CPU 5, CUDA 20)")
    parser.add_argument("--batch", type=int, help="sequences per train step for the share (16)")
    parser.add_argument("--seq", type=int, help="sequence length for the share (CPU 128, CUDA 1024)")
    parser.add_argument("--threads", type=int, help="torch threads for the step and share parts")
    parser.add_argument("--ranks", default="1,2", help="world sizes of the distributed part (CPU, gloo)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="layouts of the distributed part: ddp (replicated matrices, all_gather), "
                             "fsdp2 (row-sharded DTensors, all_to_all); default both")
    parser.add_argument("--threads-per-rank", type=int,
                        help="torch threads of every rank (default: CPU cores / largest world size)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--skip-dist", action="store_true", help="skip the distributed part")
    parser.add_argument("--out", help="JSON output (default benchmarks/results/bench_optim_<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine; drop --device or use cpu")
    args.device = torch.device(args.device) if args.device else default_device()
    for key, value in DEFAULTS[args.device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.preset not in PRESETS:
        parser.error(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    try:
        args.ranks = sorted({int(r) for r in args.ranks.split(",") if r.strip()})
    except ValueError:
        parser.error(f"--ranks must be a comma list of positive integers, got {args.ranks!r}")
    for key in ("rounds", "batch", "seq"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    if not modes or modes - set(MODES):
        parser.error(f"--modes must be a comma list of {', '.join(MODES)}, got {args.modes!r}")
    args.modes = [m for m in MODES if m in modes]
    if not args.ranks or args.ranks[0] < 1:
        parser.error(f"--ranks must be a comma list of positive integers, got {args.ranks!r}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.threads_per_rank is None:
        args.threads_per_rank = max(1, (os.cpu_count() or 1) // args.ranks[-1])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as train.py does
    env = environment(args.device)
    step_rows = bench_step(args)
    share = bench_share(args)
    dist_rows = [] if args.skip_dist else bench_dist(args)
    settings = {k: (str(v) if k == "device" else v) for k, v in vars(args).items()}
    settings["muonlab_ns_dtype"] = str(default_ns_dtype(args.device)).removeprefix("torch.")
    settings["ONEDNN_MAX_CPU_ISA"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
    lines = summary_lines(step_rows, share, dist_rows, args.device)
    path = write_results("bench_optim", {"environment": env, "settings": settings, "muon": MUON_KW,
                                         "step": step_rows, "share": share, "dist": dist_rows,
                                         "summary": lines}, args.out)
    print_table(
        f"optimizer step on {args.preset}'s hidden matrices (muonlab NS in {settings['muonlab_ns_dtype']}, "
        f"torch's in bf16) — {describe_environment(env)}",
        ["optimizer", "wall ms", "min wall ms", "CPU ms", "vs torch (wall)", "vs torch (CPU)"],
        [[r["optimizer"], f"{r['ms_per_step']:.2f}", f"{r['ms_min']:.2f}", f"{r['cpu_ms_per_step']:.2f}",
          f"{r['speedup_vs_torch_muon']:.1f}x", f"{r['cpu_speedup_vs_torch_muon']:.1f}x"] for r in step_rows],
    )
    if dist_rows:
        parts = ("NS compute", "NS + collective", "Muon step")
        print_table(
            f"distributed Muon (gloo, {args.threads_per_rank} thread(s) per rank), wall / CPU ms per step; "
            "ddp: replicated matrices, all_gather; fsdp2: row-sharded DTensors, all_to_all_single",
            ["ranks", "rank", "mode", *parts, "sent + received", "NS CPU vs 1 rank"],
            [[r["world_size"], r["rank"], r["mode"],
              *(f"{r[f'ms {p}']:.1f} / {r[f'cpu ms {p}']:.1f}" for p in parts), _mib(r["bytes per step"]),
              "n/a" if (vs_one := r["cpu ms NS compute vs 1 rank"]) is None else f"{vs_one:.2f}x"]
             for r in sorted(dist_rows, key=lambda r: (r["world_size"], r["rank"]))],
        )
    for line in lines:
        print(line)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
