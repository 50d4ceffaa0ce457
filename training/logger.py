"""Metric logging: `metrics.jsonl` always, wandb (through accelerate's tracker) when enabled.

The same metric names go to both sinks, so a report built from metrics.jsonl shows what the
wandb dashboard shows. Only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import netrc
import os
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from common.rundir import RunDir
from training.config import RunConfig, as_dict


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
    """Appends one JSON object per event to metrics.jsonl and mirrors it to the trackers."""

    def __init__(self, accelerator: Accelerator, run: RunDir, cfg: RunConfig, name: str):
        self.accelerator = accelerator
        self.path = run.metrics
        self.use_wandb = bool(cfg.logging.wandb)
        if self.use_wandb:
            accelerator.init_trackers(
                cfg.logging.wandb_project,
                config=as_dict(cfg),
                init_kwargs={"wandb": {
                    "name": name,
                    "group": cfg.logging.wandb_group,
                    "tags": list(cfg.logging.wandb_tags),
                    "mode": wandb_mode(cfg.logging.wandb_mode),
                    "dir": str(run.path),
                    # One wandb run per run directory: a resumed run continues it, while runs of the
                    # same name in other directories (other grids) stay separate.
                    "resume": "allow",
                    "id": wandb_run_id(run.path),
                }},
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.use_wandb:
            self.accelerator.log(clean, step=step)

    def log_routing_table(self, rows: list[dict]) -> None:
        """The routing table as a wandb Table (wandb imported only here: it may be absent on GPU nodes)."""
        if not (self.use_wandb and self.accelerator.is_main_process):
            return
        import wandb

        columns = ["name", "group", "optimizer", "shape", "numel"]
        table = wandb.Table(columns=columns, data=[[str(r[c]) for c in columns] for r in rows])
        self.accelerator.get_tracker("wandb", unwrap=True).log({"routing": table})


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    # JSON has no NaN/Infinity: a non-finite value is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
