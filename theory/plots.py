"""Matplotlib (Agg) figures of the theory models; imported only when plots are written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import torch  # noqa: E402

if TYPE_CHECKING:
    from theory.assoc_memory import RunResult
    from theory.scaling import ScalingResult


def _frequency_colors(p: torch.Tensor) -> list:
    """One color per class/group: dark = frequent, light = rare (log-frequency scale)."""
    logp = p.log()
    span = float(logp.max() - logp.min()) or 1.0
    cmap = plt.get_cmap("viridis")
    return [cmap(0.85 * float(logp.max() - v) / span) for v in logp]


def plot_assoc_memory(
    results: dict[str, dict[str, RunResult]], p: torch.Tensor, eps: float, path: Path
) -> None:
    """Grid optimizer x embedding of per-class correct probability vs step (log x)."""
    opts = list(results)
    embs = list(next(iter(results.values())))
    colors = _frequency_colors(p)
    fig, axes = plt.subplots(len(opts), len(embs), figsize=(3.6 * len(embs), 2.6 * len(opts)),
                             sharex=True, sharey=True, squeeze=False)
    for i, opt in enumerate(opts):
        for j, emb in enumerate(embs):
            ax, r = axes[i][j], results[opt][emb]
            steps = torch.arange(1, r.correct.shape[0] + 1)
            for k in range(p.numel()):
                ax.plot(steps, r.correct[:, k], color=colors[k], lw=0.8, alpha=0.8)
            ax.axhline(1 - eps, color="grey", ls=":", lw=0.8)
            if r.hit_step is not None:
                ax.axvline(r.hit_step + 1, color="crimson", ls="--", lw=0.8)
            ax.set_xscale("log")
            ax.set_title(f"{opt} / {emb}: worst {r.worst_class_prob:.2f}", fontsize=9)
            if i == len(opts) - 1:
                ax.set_xlabel("step + 1")
            if j == 0:
                ax.set_ylabel("p(correct class)")
    fig.suptitle("Per-class correct probability (dark = frequent, light = rare; red dashed: best class "
                 f"reaches {1 - eps:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_group_losses(
    result: ScalingResult, path: Path, title: str, reference: dict[str, torch.Tensor] | None = None
) -> None:
    """Per-group loss vs step, GD and Muon side by side (log-log); optional dotted theory curves."""
    colors = _frequency_colors(result.group_freq)
    fig, axes = plt.subplots(1, len(result.curves), figsize=(5 * len(result.curves), 3.8),
                             sharey=True, squeeze=False)
    for ax, (opt, curve) in zip(axes[0], result.curves.items(), strict=True):
        steps = torch.arange(1, curve.shape[0] + 1)
        for j in range(curve.shape[1]):
            ax.plot(steps, curve[:, j].clamp_min(1e-16), color=colors[j], lw=1.0, label=f"group {j + 1}")
            if reference is not None:
                ax.plot(steps, reference[opt][:, j], color=colors[j], lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-14)  # below this the curves are fp64 rounding noise
        ax.set_xlabel("step + 1")
        ax.set_title(opt)
    axes[0][0].set_ylabel(result.loss_label)
    axes[0][-1].legend(fontsize=6, ncol=2, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_total_losses(curves: dict[str, dict[int, torch.Tensor]], path: Path, ylabel: str) -> None:
    """Total (frequency-weighted) loss vs step for several K; one panel per optimizer."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.8), sharey=True, squeeze=False)
    for ax, (opt, by_k) in zip(axes[0], curves.items(), strict=True):
        cmap = plt.get_cmap("plasma")
        for i, (K, curve) in enumerate(by_k.items()):
            steps = torch.arange(1, curve.shape[0] + 1)
            color = cmap(0.8 * i / max(1, len(by_k) - 1))
            ax.plot(steps, curve.clamp_min(1e-16), color=color, label=f"K={K}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step + 1")
        ax.set_title(opt)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_horizon_scaling(h: dict, path: Path) -> None:
    """Final total excess loss vs horizon T (log-log) for GD and Muon, with the theory reference lines."""
    T = torch.tensor(h["T"], dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.plot(T, h["gd_excess"], "o-", label=f"GD (fit T^{h['gd_exponent']:.2f})")
    ax.plot(T, h["muon_excess"], "s-", label=f"Muon, lr = c log K / T (fit T^{h['muon_exponent']:.2f})")
    bound = (torch.log(torch.tensor(float(h["K"]))) / T) ** 2
    ax.plot(T, bound, "k:", lw=1, label="(log K / T)^2")
    if h["gd_theory_exponent"] is not None:
        ref = h["gd_excess"][0] * (T / T[0]) ** h["gd_theory_exponent"]
        ax.plot(T, ref, "C0:", lw=1, label=f"T^{h['gd_theory_exponent']:.2f} (GD lower bound rate)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("horizon T (steps)")
    ax.set_ylabel("final excess loss")
    ax.set_title(f"Label noise {h['alpha']}, K={h['K']} keys, p_k ~ k^-{h['beta']}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
