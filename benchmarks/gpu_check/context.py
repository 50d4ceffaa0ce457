"""What a part of the GPU check gets and uses: its Context, the part registry, targets, and subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.modes import Mode
from common.files import write_json

ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL = 3000


@dataclass(frozen=True)
class Context:
    """A part's mode, the folder its records go to, a scratch folder the parts share, its deadline."""

    mode: Mode
    records: Path  # <part>.json, its logs and partial results; packed into gpu_check.tar.gz
    work: Path
    deadline: float  # time.time() by which the part must be done
    part: str = ""
    train_args: tuple[str, ...] = ()

    def remaining(self) -> float:
        """Seconds left to this part, for the timeouts of its own subprocesses (a margin kept)."""
        return max(1.0, self.deadline - time.time() - 3.0)

    def device(self) -> Any:
        import torch

        return torch.device(self.mode.device)

    def save_partial(self, results: dict[str, Any]) -> None:
        """What the part has measured so far: kept as its results if it runs out of time."""
        write_json(self.records / f"{self.part}.partial.json", results)

    def record(self, part: str) -> dict[str, Any] | None:
        """Another part's record of this check (None if that part did not run)."""
        path = self.records / f"{part}.json"
        return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[Context], dict[str, Any]]
    what: str


PartFn = Callable[[Context], dict[str, Any]]


def part(what: str) -> Callable[[PartFn], Part]:
    """Make a function of a Context a Part (parts/__init__.py lists them in the order they run)."""

    def make(fn: PartFn) -> Part:
        return Part(fn.__name__, fn, what)

    return make


def target(name: str, value: float | None, threshold: float, higher: bool, mode: Mode) -> dict[str, Any]:
    """A target of the issues: met is None where it does not apply (no value, or not on a GPU)."""
    met = None
    if value is not None and mode.device == "cuda":
        met = value >= threshold if higher else value <= threshold
    return {"name": name, "value": value, "target": threshold, "higher_is_better": higher, "met": met}


def child_env(mode: Mode) -> dict[str, str]:
    """The environment of every subprocess: offline, no wandb, no progress bars in the logs."""
    return {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **mode.env}


def run_logged(ctx: Context, cmd: Sequence[str], log: Path) -> int:
    """Run cmd from the repository root within the part's time, its output in `log`; its exit code."""
    with log.open("w") as f:
        return subprocess.run(list(cmd), cwd=ROOT, env=child_env(ctx.mode), stdout=f,
                              stderr=subprocess.STDOUT, timeout=ctx.remaining()).returncode


def tail(path: Path, chars: int = LOG_TAIL) -> str:
    """The end of a log file ('' if absent)."""
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def failure(what: str, code: int, log: Path) -> RuntimeError:
    """The error of a subprocess that failed: its telling line first (train.py's one `error:` line, or the
    first exception named), then the end of its log."""
    lines = [line.strip() for line in tail(log, 100_000).splitlines() if line.strip()]
    telling = next((line for line in reversed(lines) if line.startswith("error:")), None) or next(
        (line for line in lines if re.match(r"[\w.]*(Error|Exception)\b", line)), lines[-1] if lines else "")
    return RuntimeError(f"{what} exited with {code}: {telling}\n--- end of {log.name} ---\n{tail(log)}")
