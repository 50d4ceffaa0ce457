"""One-layer linear associative memory under class imbalance (arXiv 2509.26030, section 5).

Input k (k = 0..K-1) has embedding x_k = E_in[:, k] and must retrieve class k, whose output embedding
is E_out[:, k]: f_W(x_k) = softmax(E_out^T W x_k). The loss is the frequency-weighted cross-entropy
L(W) = -sum_k p_k log f_W(x_k)_k, trained full-batch from W = 0 by GD, SignGD, Adam or Muon.
When the best-learned class first reaches probability 1 - eps, the worst class' probability
measures how balanced the learning is.

    python -m theory.assoc_memory --out DIR [--steps N] [--K K] [--ratio r | --power beta] [--eps e]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from common.errors import UserError
from theory.threads import single_threaded
from theory.updates import OPTIMIZERS, RULES, UpdateRule

DTYPE = torch.float64
EMBEDDINGS = ("identity", "rotated", "overlap")


def class_frequencies(K: int, ratio: float | None = None, power: float | None = None) -> torch.Tensor:
    """Class frequencies p (sum 1), most frequent first.

    Two groups (``ratio``): the first K/2 classes are ``ratio`` times as frequent as the last K/2.
    With ``power`` set instead: a power law p_k proportional to (k + 1)^-power.
    """
    if K < 2 or K % 2:
        raise UserError(f"K must be an even number >= 2 (classes are paired head/tail), got {K}")
    if (ratio is None) == (power is None):
        raise UserError("give exactly one of ratio (two frequency groups) or power (power law)")
    if power is not None:
        if power < 0:
            raise UserError(f"power-law exponent must be >= 0, got {power}")
        p = torch.arange(1, K + 1, dtype=DTYPE) ** -power
    else:
        if ratio < 1:
            raise UserError(f"ratio is frequent/rare and must be >= 1, got {ratio}")
        p = torch.ones(K, dtype=DTYPE)
        p[: K // 2] = ratio
    return p / p.sum()


def _random_rotation(K: int, generator: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(K, K, generator=generator, dtype=DTYPE))
    return Q * torch.sign(R.diagonal())  # sign fix makes Q Haar-distributed


def _paired_overlap(K: int) -> torch.Tensor:
    """Orthonormal embeddings in which class i and class i + K/2 share the support {i, i + K/2}.

    x_i = (e_i + e_{i+K/2}) / sqrt 2 and x_{i+K/2} = (e_{i+K/2} - e_i) / sqrt 2: orthogonal, so GD
    and Muon see exactly the identity problem, but every coordinate of W is shared by a frequent
    and a rare class, so a coordinate-wise sign lets the frequent class decide it.
    """
    h = K // 2
    E = torch.zeros(K, K, dtype=DTYPE)
    idx = torch.arange(h)
    E[idx, idx] = 1.0
    E[idx + h, idx] = 1.0
    E[idx, idx + h] = -1.0
    E[idx + h, idx + h] = 1.0
    return E / math.sqrt(2.0)


def make_embeddings(kind: str, K: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_in, E_out), each K x K with one column per class; all three kinds are orthonormal.

    identity: standard basis. rotated: independent Haar-random rotations for input and output.
    overlap: `_paired_overlap` for input and output (shared coordinates between head and tail).
    """
    if kind == "identity":
        eye = torch.eye(K, dtype=DTYPE)
        return eye, eye.clone()
    if kind == "rotated":
        g = torch.Generator().manual_seed(seed)
        return _random_rotation(K, g), _random_rotation(K, g)
    if kind == "overlap":
        E = _paired_overlap(K)
        return E, E.clone()
    raise UserError(f"unknown embedding {kind!r}; choose one of {', '.join(EMBEDDINGS)}")


def class_probs(W: torch.Tensor, E_in: torch.Tensor, E_out: torch.Tensor) -> torch.Tensor:
    """S[j, k] = probability of class j for input k (softmax over each column)."""
    return torch.softmax(E_out.T @ W @ E_in, dim=0)


def softmax_ce(
    Z: torch.Tensor, p: torch.Tensor, targets: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequency-weighted cross-entropy of logits Z[j, k] (class j, input k) against target columns.

    Returns (loss, dL/dZ = (S - Y) diag(p), S); targets Y default to the identity (input k -> class k).
    """
    log_s = torch.log_softmax(Z, dim=0)
    if targets is None:  # indexing, not 0 * log(0), so a saturated softmax cannot produce NaN
        Y, nll = torch.eye(Z.shape[0], dtype=Z.dtype), -log_s.diagonal()
    else:
        Y, nll = targets, -(targets * log_s).sum(0)
    S = log_s.exp()
    return (p * nll).sum(), (S - Y) * p, S


def loss_and_grad(
    W: torch.Tensor, E_in: torch.Tensor, E_out: torch.Tensor, p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy, its gradient E_out (S - I) diag(p) E_in^T, and the probabilities S."""
    loss, dZ, S = softmax_ce(E_out.T @ W @ E_in, p)
    return loss, E_out @ dZ @ E_in.T, S


def default_lr(name: str, p: torch.Tensor) -> float:
    """Per-optimizer learning rates (see docs/theory.md for why they are fair).

    GD: 1 / p_max, a quarter of the stability limit 4 / p_max (the loss' curvature in the logits of
    class k is at most p_k / 2). SignGD and Adam: 0.02 per coordinate. Muon: 0.04, because on the
    identity problem a sign step moves the logit margin by 2 lr and a polar step by lr, so this makes
    SignGD and Muon equally fast on the balanced problem (muon_ns uses Muon's rate).
    """
    return {"gd": 1.0 / float(p.max()), "signgd": 0.02, "adam": 0.02, "muon": 0.04, "muon_ns": 0.04}[name]


@dataclass
class RunResult:
    """One training run: per-step correct-class probabilities (rows: step 0..steps, columns: classes)
    and weighted loss, plus the verdict at the first step where the best class reaches 1 - eps."""

    correct: torch.Tensor
    loss: torch.Tensor
    hit_step: int | None
    worst_class_prob: float
    best_class_prob: float


def train(
    E_in: torch.Tensor, E_out: torch.Tensor, p: torch.Tensor, rule: UpdateRule, steps: int, eps: float
) -> RunResult:
    """Train W from zero for ``steps`` full-batch steps; record when the best class reaches 1 - eps.

    If no class reaches 1 - eps, hit_step is None and the worst/best probabilities are the final ones.
    """
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if not 0 < eps < 1:
        raise UserError(f"eps must be in (0, 1), got {eps}")
    W = torch.zeros(E_out.shape[0], E_in.shape[0], dtype=DTYPE)
    correct = torch.empty(steps + 1, p.numel(), dtype=DTYPE)
    losses = torch.empty(steps + 1, dtype=DTYPE)
    hit: int | None = None
    with single_threaded():
        for t in range(steps + 1):
            loss, grad, S = loss_and_grad(W, E_in, E_out, p)
            correct[t], losses[t] = S.diagonal(), loss
            if hit is None and correct[t].max() >= 1 - eps:
                hit = t
            if t < steps:
                W -= rule.step(grad)
    at = correct[hit if hit is not None else steps]
    return RunResult(correct, losses, hit, float(at.min()), float(at.max()))


def run_grid(
    p: torch.Tensor,
    steps: int,
    eps: float,
    seed: int = 0,
    optimizers: tuple[str, ...] = OPTIMIZERS,
    embeddings: tuple[str, ...] = EMBEDDINGS,
    lrs: dict[str, float] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, RunResult]]:
    """Train every optimizer on every embedding; returns results[optimizer][embedding]."""
    lrs = {**{name: default_lr(name, p) for name in optimizers}, **(lrs or {})}
    K = p.numel()
    results: dict[str, dict[str, RunResult]] = {name: {} for name in optimizers}
    jobs = [(o, e) for o in optimizers for e in embeddings]
    for opt, emb in tqdm(jobs, desc="assoc_memory", disable=not progress):
        E_in, E_out = make_embeddings(emb, K, seed)
        results[opt][emb] = train(E_in, E_out, p, UpdateRule(opt, lrs[opt]), steps, eps)
    return results


def summary_dict(results: dict[str, dict[str, RunResult]]) -> dict:
    """{optimizer: {embedding: {worst_class_prob, best_class_prob, steps, reached}}} for summary.json."""
    return {
        opt: {
            emb: {
                "worst_class_prob": r.worst_class_prob,
                "best_class_prob": r.best_class_prob,
                "steps": r.hit_step,
                "reached": r.hit_step is not None,
            }
            for emb, r in by_emb.items()
        }
        for opt, by_emb in results.items()
    }


def _print_table(summary: dict, eps: float, console: Console) -> None:
    table = Table(title=f"worst-class probability when the best class first reaches 1 - eps = {1 - eps:g}")
    for col in ("optimizer", "embedding", "worst", "best", "worst/best", "step"):
        table.add_column(col, justify="left" if col in ("optimizer", "embedding") else "right")
    for opt, by_emb in summary.items():
        for emb, s in by_emb.items():
            step = str(s["steps"]) if s["reached"] else "not reached"
            ratio = s["worst_class_prob"] / s["best_class_prob"]
            table.add_row(
                opt, emb, f"{s['worst_class_prob']:.4f}", f"{s['best_class_prob']:.4f}", f"{ratio:.3f}", step
            )
    console.print(table)


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the summary dict."""
    ap = argparse.ArgumentParser(prog="python -m theory.assoc_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory (summary.json, plots)")
    ap.add_argument("--steps", type=int, default=1000, help="full-batch steps per run")
    ap.add_argument("--K", type=int, default=32, help="number of classes (even)")
    freq = ap.add_mutually_exclusive_group()
    freq.add_argument("--ratio", type=float, default=None, help="frequent/rare ratio of two groups (100)")
    freq.add_argument("--power", type=float, default=None, help="power-law exponent instead of two groups")
    ap.add_argument("--eps", type=float, default=0.02, help="stop criterion: best class prob >= 1 - eps")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random rotation")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                    help=f"comma list from {','.join(RULES)} (default: {','.join(OPTIMIZERS)})")
    ap.add_argument("--embeddings", default=",".join(EMBEDDINGS), help="comma list (default: all)")
    for name in RULES:
        flag = f"--lr-{name.replace('_', '-')}"
        ap.add_argument(flag, type=float, default=None, help=f"learning rate of {name}")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = ap.parse_args(argv)

    ratio = args.ratio if args.ratio is not None or args.power is not None else 100.0
    p = class_frequencies(args.K, ratio=ratio, power=args.power)
    optimizers = _parse_list(args.optimizers, RULES, "--optimizers")
    embeddings = _parse_list(args.embeddings, EMBEDDINGS, "--embeddings")
    lrs = {n: getattr(args, f"lr_{n}") for n in optimizers if getattr(args, f"lr_{n}") is not None}
    results = run_grid(p, args.steps, args.eps, args.seed, optimizers, embeddings, lrs, progress=True)

    summary = summary_dict(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_plots:
        from theory.plots import plot_assoc_memory

        plot_assoc_memory(results, p, args.eps, args.out / "assoc_memory.png")
    console = Console()
    _print_table(summary, args.eps, console)
    console.print(f"wrote {args.out / 'summary.json'}" + ("" if args.no_plots else " and assoc_memory.png"))
    return summary


def _parse_list(spec: str, valid: tuple[str, ...], flag: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown or empty {bad or spec!r}; valid: {','.join(valid)}")
    return items


if __name__ == "__main__":
    try:
        main()
    except UserError as err:  # bad settings: one line, no traceback
        raise SystemExit(f"theory.assoc_memory: {err}") from None
