"""``python -m metrics.spectra``: spectral metrics of checkpoints, written as JSON and plotted.

Inputs are run directories (their latest checkpoint, plus the ``spectra/*`` and ``spectra_update/*``
curves of its metrics log), checkpoint directories (``checkpoints/step_<N>``) or ``.safetensors`` files.
Only the 2-D weights of the chosen groups are read from the safetensors file, so no model is built.
Several inputs are compared in the same plots (e.g. a Muon and an AdamW run).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import torch
from tqdm import tqdm

from common.errors import MissingFileError, UserError
from common.files import write_text
from common.rundir import WEIGHTS_FILE, RunDir, checkpoint_step
from metrics.spectra import HIDDEN_GROUPS, METRICS, layer_of, singular_values, summarize
from optim.groups import GROUPS, group_of

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the non-interactive backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.plotting import legend_beside  # noqa: E402


@dataclass
class Source:
    """One input: where its weights are, and its run directory (for the logged curves) when it is one."""

    label: str
    weights: Path | None
    step: int | None = None
    run: RunDir | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    singular_values: dict[str, list[float]] = field(default_factory=dict)
    matrices: list[tuple[str, str, int | None]] = field(default_factory=list)  # (name, group, layer)


def resolve(path: Path) -> Source:
    """A Source for a run directory, a checkpoint directory or a safetensors file."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"{path} is not a .safetensors file; pass a run or checkpoint directory")
        return Source(path.stem, path)
    if (path / WEIGHTS_FILE).is_file():  # a checkpoint, or any directory holding the weights
        step = checkpoint_step(path)
        label = f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name
        return Source(label, path / WEIGHTS_FILE, step)
    if path.is_dir():
        run = RunDir(path)
        ckpt = run.latest_checkpoint()
        if ckpt is None and not run.metrics.is_file():
            raise MissingFileError(f"{path} has neither checkpoints/step_<N>/{WEIGHTS_FILE} nor "
                                   f"{run.metrics.name}; pass a run directory, a checkpoint directory or a "
                                   ".safetensors file")
        weights, step = (ckpt / WEIGHTS_FILE, checkpoint_step(ckpt)) if ckpt else (None, None)
        return Source(path.name, weights, step, run if run.metrics.is_file() else None)
    raise MissingFileError(f"{path} does not exist")


def read_matrices(weights: Path, groups: tuple[str, ...]) -> list[tuple[str, str, int | None, torch.Tensor]]:
    """(name, group, layer, tensor) of the 2-D weights of ``groups`` in a safetensors file."""
    from safetensors import safe_open

    out = []
    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            if len(f.get_slice(name).get_shape()) == 2 and (group := group_of(name)) in groups:
                out.append((name, group, layer_of(name), f.get_tensor(name)))
    return out


def compute(source: Source, groups: tuple[str, ...]) -> None:
    """Fill ``source.metrics`` and ``source.singular_values`` from its weights."""
    matrices = read_matrices(source.weights, groups)
    if not matrices:
        raise UserError(f"{source.weights} holds no 2-D weights of groups {', '.join(groups)}; "
                         "is it a muonlab (Llama-named) checkpoint?")
    entries = []
    for name, group, layer, W in tqdm(matrices, desc=f"spectra {source.label}", unit="matrix"):
        s = singular_values(W)
        source.singular_values[name] = s.tolist()
        source.matrices.append((name, group, layer))
        entries.append((group, layer, s))
    source.metrics = summarize(entries)


def _layer_values(metrics: dict[str, float], group: str, metric: str) -> tuple[list[int], list[float]]:
    pattern = re.compile(rf"^spectra/{re.escape(group)}/layer(\d+)/{metric}$")
    pairs = sorted((int(m.group(1)), v) for k, v in metrics.items() if (m := pattern.match(k)))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def plot_groups(sources: list[Source], groups: tuple[str, ...], out: Path) -> Path:
    """Mean-over-layers metrics: one panel per metric, bars per group, one bar per input."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    width = 0.8 / len(sources)
    for ax, metric in zip(axes.flat, METRICS, strict=True):
        for i, src in enumerate(sources):
            values = [src.metrics.get(f"spectra/{g}/{metric}", float("nan")) for g in groups]
            ax.bar([x + i * width for x in range(len(groups))], values, width, label=src.label)
        ax.set_xticks([x + width * (len(sources) - 1) / 2 for x in range(len(groups))], groups)
        ax.set_title(metric)
    legend_beside(axes[0, 1], fontsize=8)
    return _save(fig, out / "groups.png")


def plot_layers(src: Source, groups: tuple[str, ...], out: Path) -> Path:
    """Per-layer metrics of one input: one panel per metric, one line per group."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    for ax, metric in zip(axes.flat, METRICS, strict=True):
        for g in groups:
            layers, values = _layer_values(src.metrics, g, metric)
            if layers:
                ax.plot(layers, values, marker="o", label=g)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
        ax.set_title(metric)
    legend_beside(axes[0, 1], fontsize=8)
    fig.suptitle(src.label)
    return _save(fig, out / f"layers_{_safe(src.label)}.png")


def plot_singular_values(src: Source, groups: tuple[str, ...], out: Path) -> Path:
    """Normalized singular values s_i / s_1 of every matrix, one panel per group, one line per layer."""
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharey=True)
    for ax, g in zip(axes.flat, groups, strict=False):
        mine = [(layer, src.singular_values[n]) for n, gg, layer in src.matrices if gg == g]
        for layer, s in mine:
            top = s[0] if s and s[0] > 0 else 1.0
            ax.plot([i / max(len(s) - 1, 1) for i in range(len(s))], [v / top for v in s],
                    color=plt.cm.viridis((layer or 0) / max(len(mine) - 1, 1)), lw=1)
        ax.set_yscale("log")
        ax.set_title(g)
        ax.set_xlabel("rank / (n - 1)")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(f"{src.label}: singular values s_i / s_1 (colour: layer)")
    return _save(fig, out / f"singular_values_{_safe(src.label)}.png")


# metrics log prefix -> (figure file prefix, title): the weights' spectra and their updates'.
CURVES = {"spectra": ("over_steps", "spectra over training"),
          "spectra_update": ("update_over_steps", "spectra of the last step's update over training")}


def plot_over_steps(src: Source, groups: tuple[str, ...], out: Path, prefix: str = "spectra") -> Path | None:
    """The mean-over-layers ``<prefix>/<group>/<metric>`` curves logged in a run's metrics log
    (prefix ``spectra``: the weights; ``spectra_update``: each eval's last update)."""
    rows = list(src.run.events())
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    drawn = False
    for ax, metric in zip(axes.flat, METRICS, strict=True):
        for g in groups:
            key = f"{prefix}/{g}/{metric}"
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=g)
                drawn = True
        ax.set_xlabel("step")
        ax.set_title(metric)
    if not drawn:
        plt.close(fig)
        return None
    legend_beside(axes[0, 1], fontsize=8)
    name, title = CURVES[prefix]
    fig.suptitle(f"{src.label}: {title}")
    return _save(fig, out / f"{name}_{_safe(src.label)}.png")


def _print_summary(sources: list[Source], groups: tuple[str, ...], written: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for src in sources:
        if not src.metrics:
            continue
        table = Table(title=f"{src.label}" + (f" (step {src.step})" if src.step is not None else ""))
        table.add_column("group")
        for metric in METRICS:
            table.add_column(metric, justify="right")
        for g in groups:
            if f"spectra/{g}/{METRICS[0]}" in src.metrics:
                table.add_row(g, *(f"{src.metrics[f'spectra/{g}/{m}']:.4g}" for m in METRICS))
        console.print(table)
    console.print(f"wrote {len(written)} files to {written[0].parent}: " + ", ".join(p.name for p in written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metrics.spectra", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="run dirs, checkpoint dirs or .safetensors files")
    parser.add_argument("--out", type=Path, required=True, help="directory for spectra.json and the plots")
    parser.add_argument("--groups", default=",".join(HIDDEN_GROUPS),
                        help=f"comma-separated groups (default {','.join(HIDDEN_GROUPS)})")
    args = parser.parse_args(argv)
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS or g == "scalar"]
    if unknown or not groups:
        parser.error(f"--groups {args.groups!r}: unknown or empty; choose from {', '.join(GROUPS[:-1])}")
    sources = [resolve(p) for p in args.inputs]
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        if src.weights is not None:
            compute(src, groups)
    with_weights = [s for s in sources if s.metrics]
    json_path = args.out / "spectra.json"
    write_text(json_path, json.dumps(
        [{"label": s.label, "weights": str(s.weights), "step": s.step, "metrics": s.metrics,
          "singular_values": s.singular_values} for s in with_weights], indent=1))
    written.append(json_path)
    if with_weights:
        written.append(plot_groups(with_weights, groups, args.out))
    for src in with_weights:
        written += [plot_layers(src, groups, args.out), plot_singular_values(src, groups, args.out)]
    for src in sources:
        for prefix in CURVES if src.run is not None else ():
            if path := plot_over_steps(src, groups, args.out, prefix):
                written.append(path)
    _print_summary(sources, groups, written)
    return 0


def _save(fig: plt.Figure, path: Path) -> Path:
    """Lay out, write (120 dpi) and close a figure; returns its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
