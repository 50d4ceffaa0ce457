"""Softmax retrieval with power-law key frequencies: GD vs Muon dynamics and scaling (arXiv 2602.05725).

K query-answer pairs with orthonormal embeddings, taken as the identity without loss of generality
(GD and Muon commute with rotations of the embeddings; tests/test_theory.py checks it). The logits of
key k are the column W[:, k] of a K x K matrix trained from W = 0. Keys are split into M equal groups;
each key of group j (j = 1..M) has frequency proportional to j^-beta. With label noise alpha the
answer of key k is drawn from y_k = (1 - alpha) e_k + alpha / K (uniform). Loss: sum_k p_k CE(y_k,
softmax(W[:, k])). Per key we report the excess loss KL(y_k || softmax(W[:, k])) (the plain
cross-entropy when alpha = 0), averaged over the keys of each group.

    python -m theory.scaling --out DIR [--K 64] [--groups 8] [--beta 1.5] [--alpha 0.1] [--steps 2000]
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
from theory.assoc_memory import DTYPE, softmax_ce
from theory.threads import single_threaded
from theory.updates import UpdateRule

SCALING_OPTIMIZERS = ("gd", "muon")


def key_frequencies(K: int, M: int, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, group): per-key frequencies (sum 1) and the group index (0..M-1) of each key."""
    if M < 1 or K < M or K % M:
        raise UserError(f"K={K} keys must split into M={M} equal groups: pick K a multiple of M >= 1")
    if beta < 0:
        raise UserError(f"power-law exponent beta must be >= 0, got {beta}")
    group = torch.arange(K) // (K // M)
    p = (group + 1).to(DTYPE) ** -beta
    return p / p.sum(), group


def noisy_targets(K: int, alpha: float) -> torch.Tensor:
    """Target distributions as columns: (1 - alpha) e_k + alpha / K."""
    if not 0 <= alpha < 1:
        raise UserError(f"label noise alpha must be in [0, 1), got {alpha}")
    return (1 - alpha) * torch.eye(K, dtype=DTYPE) + alpha / K


def excess_per_key(Z: torch.Tensor, alpha: float) -> torch.Tensor:
    """KL(y_k || softmax(Z[:, k])) for every key k, accurate down to ~1e-300 when alpha = 0."""
    if alpha == 0:
        # -log s_k = log(1 + sum_{j != k} exp(z_j - z_k)); log1p keeps tiny losses exact
        diff = Z - Z.diagonal()
        diff.fill_diagonal_(-math.inf)
        return torch.log1p(diff.exp().sum(0))
    Y = noisy_targets(Z.shape[0], alpha)
    # clamp: rounding makes a converged KL slightly negative, which log-scale plots cannot show
    return (Y * (Y.log() - torch.log_softmax(Z, dim=0))).sum(0).clamp_min(0.0)


@dataclass
class ScalingResult:
    """Per-group excess-loss curves (rows: step 0..steps) and the frequency-weighted total per optimizer."""

    K: int
    group_freq: torch.Tensor
    curves: dict[str, torch.Tensor]
    totals: dict[str, torch.Tensor]
    lrs: dict[str, float]
    alpha: float

    @property
    def loss_label(self) -> str:
        return "excess loss KL(y || s)" if self.alpha > 0 else "loss -log p(answer)"


def train(
    p: torch.Tensor, group: torch.Tensor, alpha: float, rule: UpdateRule, steps: int,
    record: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train W from zero; returns (per-group mean excess [steps+1, M], weighted total excess [steps+1]).

    With record=False only the final step is evaluated (rows 0..steps-1 are NaN), which saves time
    when only the end point matters.
    """
    K, M = p.numel(), int(group.max()) + 1
    Y = None if alpha == 0 else noisy_targets(K, alpha)
    W = torch.zeros(K, K, dtype=DTYPE)
    per_group = torch.full((steps + 1, M), math.nan, dtype=DTYPE)
    totals = torch.full((steps + 1,), math.nan, dtype=DTYPE)
    counts = torch.bincount(group, minlength=M).to(DTYPE)
    with single_threaded():
        for t in range(steps + 1):
            if record or t == steps:
                ex = excess_per_key(W, alpha)
                per_group[t] = torch.zeros(M, dtype=DTYPE).index_add_(0, group, ex) / counts
                totals[t] = (p * ex).sum()
            if t < steps:
                W -= rule.step(softmax_ce(W, p, Y)[1])
    return per_group, totals


def muon_horizon_lr(K: int, horizon: int, c: float = 3.0) -> float:
    """Muon's lr for a known horizon T in the noisy case: c log(K) / T (the paper's Theta(log K / T)).

    A Muon step moves every logit margin by about lr, so the optimum margin log(K (1 - alpha) / alpha)
    is reached within the horizon; the oscillation left around it then costs O(lr^2).
    """
    if horizon < 1:
        raise UserError(f"horizon must be >= 1 step, got {horizon}")
    return c * math.log(K) / horizon


def run_dynamics(
    K: int, M: int, beta: float, alpha: float, steps: int, lr_gd: float | None = None, lr_muon: float = 0.02
) -> ScalingResult:
    """GD (lr 1/p_max unless given) and Muon (lr_muon) on one problem; per-group curves for both."""
    p, group = key_frequencies(K, M, beta)
    lrs = {"gd": lr_gd if lr_gd is not None else 1.0 / float(p.max()), "muon": lr_muon}
    curves, totals = {}, {}
    for opt in SCALING_OPTIMIZERS:
        curves[opt], totals[opt] = train(p, group, alpha, UpdateRule(opt, lrs[opt]), steps)
    group_freq = p[torch.arange(M) * (K // M)]
    return ScalingResult(K, group_freq, curves, totals, lrs, alpha)


def noiseless_reference(result: ScalingResult) -> dict[str, torch.Tensor]:
    """Theory curves [steps+1, M] for the noiseless run.

    GD: the asymptote (K - 1) / (K lr p_j t), capped at the initial loss log K.
    Muon: a polar step on this problem is about lr (I - J/K), so every margin grows by lr per step and
    loss = log(1 + (K - 1) exp(-lr t)) for every group.
    """
    T, K = result.curves["gd"].shape[0] - 1, result.K
    t = torch.arange(T + 1, dtype=DTYPE)[:, None]
    gd = ((K - 1) / (K * result.lrs["gd"] * result.group_freq * t)).clamp_max(math.log(K))
    muon = torch.log1p((K - 1) * torch.exp(-result.lrs["muon"] * t)).expand(-1, result.group_freq.numel())
    return {"gd": gd, "muon": muon}


def loglog_slope(x: torch.Tensor, y: torch.Tensor) -> float:
    """Least-squares slope of log y against log x (the exponent of a power law y ~ x^slope)."""
    return _slope(x.log(), y.log())


def _slope(x: torch.Tensor, y: torch.Tensor) -> float:
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def fit_noiseless(result: ScalingResult, start_frac: float = 0.5) -> dict:
    """Fits on the noiseless run over steps [start_frac * T, T].

    GD: per-group exponent of loss vs t (theory: -1) and level loss * t * lr * p_j (theory:
    (K - 1) / K, i.e. loss = 1 / (lr p_j t)); slope of final loss vs group frequency (theory: -1).
    Muon: per-group exponential rate -d log(loss) / dt and the spread of final losses across groups.
    """
    T = result.curves["gd"].shape[0] - 1
    t = torch.arange(int(start_frac * T), T + 1, dtype=DTYPE)
    gd, mu = result.curves["gd"][t.long()], result.curves["muon"][t.long()]
    gd_exp = [loglog_slope(t, gd[:, j]) for j in range(gd.shape[1])]
    gd_level = (result.curves["gd"][T] * T * result.lrs["gd"] * result.group_freq).tolist()
    usable = mu > 1e-250  # Muon's loss can underflow; fit only where it is representable
    mu_rate = [-_slope(t[usable[:, j]], mu[usable[:, j], j].log()) for j in range(mu.shape[1])]
    final = {opt: c[T] for opt, c in result.curves.items()}
    return {
        "gd_exponent": gd_exp,
        "gd_exponent_mean": sum(gd_exp) / len(gd_exp),
        "gd_level": gd_level,
        "gd_final_vs_freq_slope": loglog_slope(result.group_freq, final["gd"]),
        "muon_rate": mu_rate,
        "final_spread": {opt: float(f.max() / f.min()) for opt, f in final.items()},
    }


def horizon_scaling(
    K: int, beta: float, alpha: float, horizons: list[int], c: float = 3.0, progress: bool = False
) -> dict:
    """Final total excess loss vs horizon T with one key per group (p_k ~ k^-beta), GD vs Muon.

    GD runs once at lr 1/p_max and is read at every T; Muon is rerun per T with lr = c log K / T.
    Theory (noisy, beta > 1): GD >~ T^-(1 - 1/beta); Muon <~ (log K / T)^2.
    """
    p, group = key_frequencies(K, K, beta)
    _, gd_tot = train(p, group, alpha, UpdateRule("gd", 1.0 / float(p.max())), max(horizons))
    gd = [float(gd_tot[T]) for T in horizons]
    muon = []
    for T in tqdm(horizons, desc="horizons", disable=not progress, leave=False):
        rule = UpdateRule("muon", muon_horizon_lr(K, T, c))
        muon.append(float(train(p, group, alpha, rule, T, record=False)[1][T]))
    Ts = torch.tensor(horizons, dtype=DTYPE)
    return {
        "K": K, "beta": beta, "alpha": alpha, "T": horizons, "gd_excess": gd, "muon_excess": muon,
        "gd_exponent": loglog_slope(Ts, torch.tensor(gd, dtype=DTYPE)),
        "muon_exponent": loglog_slope(Ts, torch.tensor(muon, dtype=DTYPE)),
        "gd_theory_exponent": -(1 - 1 / beta) if beta > 1 else None,
        "muon_theory_exponent": -2.0,
    }


def _final_groups(result: ScalingResult) -> list[dict]:
    return [
        {"group": j + 1, "key_freq": float(result.group_freq[j]),
         **{opt: float(c[-1, j]) for opt, c in result.curves.items()}}
        for j in range(result.group_freq.numel())
    ]


def _steps_to(total: torch.Tensor, level: float) -> int | None:
    below = torch.nonzero(total <= level)
    return int(below[0]) if below.numel() else None


def run_all(
    K: int = 64, M: int = 8, beta: float = 2.0, alpha: float = 0.1, steps: int = 1500, lr_muon: float = 0.02,
    Ks: tuple[int, ...] = (16, 32, 64), horizons: tuple[int, ...] = (100, 200, 400, 800, 1600),
    horizon_K: int = 64, c: float = 3.0, progress: bool = False,
) -> tuple[dict, dict]:
    """All four experiments; returns (summary for summary.json, raw results for the plots)."""
    # check every setting before the first (slow) run: these raise with the fix in the message
    key_frequencies(K, M, beta)
    noisy_targets(K, alpha)
    if steps < 1 or min(horizons) < 1:
        raise UserError(f"steps ({steps}) and horizons ({horizons}) must be >= 1")
    jobs = tqdm(total=3 + len(Ks), desc="scaling", disable=not progress)
    clean = run_dynamics(K, M, beta, 0.0, steps, lr_muon=lr_muon)
    jobs.update()
    noisy = run_dynamics(K, M, beta, alpha, steps, lr_muon=muon_horizon_lr(K, steps, c))
    jobs.update()
    by_k = {}
    for k in Ks:  # one key per group: a larger K adds rarer keys to the tail
        by_k[k] = run_dynamics(k, k, beta, 0.0, steps, lr_muon=lr_muon)
        jobs.update()
    horizon = horizon_scaling(horizon_K, beta, alpha, list(horizons), c, progress=progress)
    jobs.update()
    jobs.close()
    summary = {
        "settings": {"K": K, "groups": M, "beta": beta, "alpha": alpha, "steps": steps,
                     "lr": {"noiseless": clean.lrs, "noisy": noisy.lrs}, "muon_horizon_c": c},
        "noiseless": {"final": _final_groups(clean), **fit_noiseless(clean)},
        "noisy": {"final": _final_groups(noisy),
                  "total_final": {opt: float(t[-1]) for opt, t in noisy.totals.items()}},
        "by_K": {
            str(k): {**{f"{opt}_final_total": float(t[-1]) for opt, t in r.totals.items()},
                     **{f"{opt}_steps_to_1e-2": _steps_to(t, 1e-2) for opt, t in r.totals.items()}}
            for k, r in by_k.items()
        },
        "horizon_scaling": horizon,
    }
    return summary, {"noiseless": clean, "noisy": noisy, "by_K": by_k}


def _print_summary(summary: dict, console: Console) -> None:
    table = Table(title="Final per-group loss (noiseless: CE; noisy: excess KL), GD vs Muon")
    for col in ("group", "key freq", "GD clean", "Muon clean", "GD noisy", "Muon noisy"):
        table.add_column(col, justify="right")
    for a, b in zip(summary["noiseless"]["final"], summary["noisy"]["final"], strict=True):
        table.add_row(str(a["group"]), f"{a['key_freq']:.2e}", f"{a['gd']:.2e}", f"{a['muon']:.2e}",
                      f"{b['gd']:.2e}", f"{b['muon']:.2e}")
    console.print(table)
    fit, hz = summary["noiseless"], summary["horizon_scaling"]
    console.print(
        f"GD noiseless: loss ~ t^{fit['gd_exponent_mean']:.2f} (theory -1), final loss ~ p_j^"
        f"{fit['gd_final_vs_freq_slope']:.2f} (theory -1); Muon: exp. rate "
        f"{min(fit['muon_rate']):.4f}..{max(fit['muon_rate']):.4f}/step; final max/min across groups: "
        f"GD {fit['final_spread']['gd']:.1f}, Muon {fit['final_spread']['muon']:.2f}"
    )
    console.print(
        f"noisy horizon scaling (K={hz['K']}, one key per group): GD excess ~ T^{hz['gd_exponent']:.2f}, "
        f"Muon (lr = c log K / T) ~ T^{hz['muon_exponent']:.2f}; at T={hz['T'][-1]}: "
        f"GD {hz['gd_excess'][-1]:.2e} vs Muon {hz['muon_excess'][-1]:.2e}"
    )


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the summary dict."""
    ap = argparse.ArgumentParser(prog="python -m theory.scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory (summary.json, plots)")
    ap.add_argument("--K", type=int, default=64, help="number of keys of the per-group runs")
    ap.add_argument("--groups", type=int, default=8, help="number of frequency groups M (divides K)")
    ap.add_argument("--beta", type=float, default=2.0, help="power-law exponent of the group frequencies")
    ap.add_argument("--alpha", type=float, default=0.1, help="label noise of the noisy runs")
    ap.add_argument("--steps", type=int, default=1500, help="full-batch steps of the per-group runs")
    ap.add_argument("--lr-muon", type=float, default=0.02, help="Muon lr of the noiseless runs")
    ap.add_argument("--c", type=float, default=3.0, help="noisy Muon lr = c log(K) / horizon")
    ap.add_argument("--Ks", default="16,32,64", help="comma list of K (one key per group) for loss vs K")
    ap.add_argument("--horizons", default="100,200,400,800,1600", help="comma list of horizons T")
    ap.add_argument("--horizon-K", type=int, default=64, help="keys (one per group) of the horizon runs")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = ap.parse_args(argv)
    Ks, horizons = _int_list(args.Ks, "--Ks"), _int_list(args.horizons, "--horizons")

    summary, raw = run_all(args.K, args.groups, args.beta, args.alpha, args.steps, args.lr_muon, Ks,
                           horizons, args.horizon_K, args.c, progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_plots:
        from theory import plots

        setting = f"K={args.K}, M={args.groups}, beta={args.beta}"
        plots.plot_group_losses(raw["noiseless"], args.out / "scaling_noiseless.png",
                                f"Noiseless, {setting} (dotted: theory)",
                                noiseless_reference(raw["noiseless"]))
        plots.plot_group_losses(raw["noisy"], args.out / "scaling_noisy.png",
                                f"Label noise alpha={args.alpha}, {setting}")
        plots.plot_total_losses({opt: {k: r.totals[opt] for k, r in raw["by_K"].items()}
                                 for opt in SCALING_OPTIMIZERS},
                                args.out / "scaling_by_K.png", "total loss sum_k p_k loss_k")
        plots.plot_horizon_scaling(summary["horizon_scaling"], args.out / "scaling_horizon.png")
    console = Console()
    _print_summary(summary, console)
    console.print(f"wrote {args.out / 'summary.json'}" + ("" if args.no_plots else " and 4 plots"))
    return summary


def _int_list(spec: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise SystemExit(f"{flag}: expected a comma list of integers, got {spec!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{flag}: expected positive integers, got {spec!r}")
    return values


if __name__ == "__main__":
    try:
        main()
    except UserError as err:  # bad settings: one line, no traceback
        raise SystemExit(f"theory.scaling: {err}") from None
