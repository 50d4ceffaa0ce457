"""Metric logging: the run directory's metrics log (`RunDir.metrics`) always, wandb (through
accelerate's tracker) when enabled.

The same metric names go to both sinks, so a report built from the metrics log shows what the
wandb dashboard shows. Only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import netrc
import os
import re
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from common.files import write_errors
from common.rundir import RunDir
from metrics.names import EVAL_LOSS, QA_FAMILY, TAIL_BUCKET, TAIL_FAMILY
from training.config import RunConfig, as_dict
from training.identity import wandb_names


def wandb_mode(cfg_mode: str | None) -> str:
    """'online' when the user has wandb credentials, else 'offline' (unless set explicitly)."""
    if cfg_mode:
        return cfg_mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def wandb_run_id(run_dir: Path) -> str:
    """A stable wandb id for a run directory: its name plus a hash of its absolute path."""
    path = Path(run_dir).resolve()
    return f"{path.name[:48]}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


class MetricsLogger:
    """Appends one JSON object per event to the metrics log and mirrors it to wandb when enabled.

    On wandb: `train/tokens` is the x axis of every metric, eval/loss keeps its minimum as summary,
    per-layer spectra go to one table per evaluation (the per-group means stay scalars), and the
    tail-bucket losses also form one bar chart per evaluation.
    """

    def __init__(self, accelerator: Accelerator, run: RunDir, cfg: RunConfig, routing: list[dict],
                 fresh: bool, tokens_per_step: int):
        self.accelerator = accelerator
        self.path = run.metrics
        self.tokens_per_step = tokens_per_step
        self.wandb = None
        if cfg.logging.wandb and accelerator.is_main_process:
            self.wandb = _init_wandb(accelerator, run, cfg)
            if fresh:  # at step 0, with the initial evaluation (a later step would hide step 0)
                self.wandb.log({"routing": _routing_table(routing)}, step=0)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        # A failed append may leave part of a line: resume drops it and logs that step again.
        with write_errors(self.path), self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.wandb is not None:
            self.wandb.log(_for_wandb(clean, step * self.tokens_per_step), step=step)


def _init_wandb(accelerator: Accelerator, run: RunDir, cfg: RunConfig) -> Any:
    """The wandb run (through accelerate's tracker), with the x axis and summaries defined."""
    accelerator.init_trackers(
        cfg.logging.wandb_project,
        config=as_dict(cfg),
        init_kwargs={"wandb": {
            **wandb_names(cfg, run.name),
            "mode": wandb_mode(cfg.logging.wandb_mode),
            "dir": str(run.path),
            # One wandb run per run directory: a resumed run continues it, while runs of the
            # same name in other directories (other grids) stay separate.
            "resume": "allow",
            "id": wandb_run_id(run.path),
        }},
    )
    wb = accelerator.get_tracker("wandb", unwrap=True)
    wb.define_metric(TOKENS)
    for prefix in ("train", "perf", "eval", "spectra", "spectra_update", "qa"):
        wb.define_metric(f"{prefix}/*", step_metric=TOKENS)
    wb.define_metric(EVAL_LOSS, summary="min")
    wb.define_metric(f"{TAIL_FAMILY}*", summary="last")
    wb.define_metric(f"{QA_FAMILY}*", summary="last")
    return wb


TOKENS = "train/tokens"  # wandb's x axis (the metrics log has `step`; tokens = step * batch * seq_len)


def _for_wandb(metrics: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The event as wandb shows it: tokens added, per-layer spectra as one table, buckets as one chart."""
    import wandb  # only here: wandb may be absent on a GPU node that does not log to it

    out: dict[str, Any] = {TOKENS: tokens}
    layers, buckets = [], []
    for key, value in metrics.items():
        if (m := _PER_LAYER.match(key)) is not None:
            layers.append([m["prefix"], m["group"], int(m["layer"]), m["metric"], value])
        else:
            out[key] = value
            if (b := TAIL_BUCKET.fullmatch(key)) is not None:
                buckets.append([int(b[1]), value])
    if layers:
        columns = ["kind", "group", "layer", "metric", "value"]
        out["spectra_per_layer"] = wandb.Table(columns=columns, data=layers)
    if buckets:
        table = wandb.Table(columns=["bucket (0 = most frequent)", "loss"], data=sorted(buckets))
        out[f"{TAIL_FAMILY}buckets"] = wandb.plot.bar(table, "bucket (0 = most frequent)", "loss",
                                                  title="eval loss by token-frequency bucket")
    return out


_PER_LAYER = re.compile(
    r"^(?P<prefix>spectra(?:_update)?)/(?P<group>\w+)/layer(?P<layer>\d+)/(?P<metric>\w+)$")


def _routing_table(rows: list[dict]) -> Any:
    import wandb

    columns = ["name", "group", "optimizer", "shape", "numel"]
    return wandb.Table(columns=columns, data=[[str(r["shape"]) if c == "shape" else r[c] for c in columns]
                                              for r in rows])


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    # JSON has no NaN/Infinity: a non-finite value is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
