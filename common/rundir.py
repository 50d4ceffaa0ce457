"""A run directory's layout, in one place: its file names, its checkpoints and what "complete" means.

    runs/<name>/
      config.yaml        the resolved config (written at start)
      routing.json       parameter -> group -> optimizer
      tokenizer.json     the run's tokenizer, copied from the prepared dataset
      data.json          the prepared dataset's manifest (meta.json), copied
      metrics.jsonl      one JSON object per logging event, each with "step"
      summary.json       final metrics; its presence marks the run as finished
      stopped.json       present while a run stopped by a signal waits to be resumed
      diverged.json      present when the run stopped on a non-finite loss (step, loss)
      extensions.json    the history of `train.extend_to`: [{"from_steps", "to_steps", "checkpoint"}, ...]
      checkpoints/step_<N>/   accelerate's state; complete once loop_state.json (with each file's size
                              and sha256) is in it
      evals/step_<N>[_tokens<T>][_data-<id>].json   `python -m training.evaluate` of that checkpoint
    runs/.<name>.lock    held by the process training the run (beside it: a refused start leaves no directory)

train.py, the checkpoint code, the logger, the exporter, the spectra report, evaluation and the
ablation runner all read and write run directories through `RunDir`.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import InputWarning, MissingFileError
from common.files import write_json, write_text
from common.lock import holder

_STEP_DIR = re.compile(r"^step_(\d+)$")
RUN_STATUSES = ("missing", "running", "stopped", "diverged", "failed", "complete")
# The statuses of a run that is not trained again (the grid runner, its sbatch script, a tuning sweep):
# a diverged run would diverge again; its outcome is an outcome of the sweep.
DONE_STATUSES = ("complete", "diverged")
CHECKPOINT_MARKER = "loop_state.json"  # written last into a checkpoint: its presence makes it complete
WEIGHTS_FILE = "model.safetensors"  # accelerate.save_state's file name for the first model


@dataclass(frozen=True)
class RunDir:
    """The directory of one training run (it need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def routing(self) -> Path:
        return self.path / "routing.json"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def data_manifest(self) -> Path:
        return self.path / "data.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def stop_marker(self) -> Path:
        """Written when a signal stopped the run after a checkpoint; removed when it resumes."""
        return self.path / "stopped.json"

    @property
    def divergence_marker(self) -> Path:
        """Written when the training loss became non-finite; removed when the run is started again."""
        return self.path / "diverged.json"

    @property
    def extensions(self) -> Path:
        """The run's extension history (`train.extend_to`), oldest first; absent if never extended."""
        return self.path / "extensions.json"

    @property
    def lock(self) -> Path:
        """The lock of the process that trains this run (common/lock.py), beside the directory."""
        return self.path.parent / f".{self.path.name}.lock"

    @property
    def checkpoints_root(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """Where the checkpoint of `step` lives (complete or not)."""
        return self.checkpoints_root / f"step_{step}"

    def evaluation(self, step: int, tokens: int | None = None, data: str | None = None) -> Path:
        """Where `python -m training.evaluate` writes its figures for the checkpoint of `step`.

        step_<N>.json on the run's own data and budget; another budget adds `_tokens<T>`, another
        prepared dataset `_data-<id>` (`data` is a file-name-safe id of it), so no result replaces another.
        """
        suffix = (f"_tokens{tokens}" if tokens is not None else "") + (f"_data-{data}" if data else "")
        return self.path / "evals" / f"step_{step}{suffix}.json"

    # -- state ------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether train.py has started a run here (its config is written first)."""
        return self.config.is_file()

    def is_finished(self) -> bool:
        """Whether the run completed: summary.json is written last."""
        return self.summary.is_file()

    def diverged(self) -> bool:
        """Whether the run's last attempt stopped on a non-finite loss."""
        return self.divergence_marker.is_file()

    def read_extensions(self) -> list[dict[str, Any]]:
        """[{"from_steps": 60, "to_steps": 120, "checkpoint": "step_60"}, ...]: each `train.extend_to`."""
        return json.loads(self.extensions.read_text()) if self.extensions.is_file() else []

    def record_extension(self, from_steps: int, to_steps: int, checkpoint: Path) -> None:
        """Append an extension to the history (written with the longer config.yaml)."""
        history = [*self.read_extensions(),
                   {"from_steps": from_steps, "to_steps": to_steps, "checkpoint": Path(checkpoint).name}]
        write_json(self.extensions, history)

    def status(self) -> str:
        """The run's state, one of RUN_STATUSES, from its files alone (the one classification).

        complete (summary.json, written last) whatever else is there. Then running if a live process
        holds the run's lock: train.py takes it before it reads or writes the directory (so before
        config.yaml exists) and removes an earlier attempt's markers only later; the kernel frees it
        when that process dies. Then the markers: diverged (diverged.json), stopped (stopped.json:
        resumable). Then missing (no config.yaml: nothing was started here), else failed (it died
        without a marker: a crash, a kill); a failed run resumes from its last checkpoint.
        """
        if self.is_finished():
            return "complete"
        if holder(self.lock):
            return "running"
        if self.diverged():
            return "diverged"
        if self.stop_marker.is_file():
            return "stopped"
        return "failed" if self.exists() else "missing"

    def modified(self) -> float:
        """When the run last wrote its config or a metric (a time.time() timestamp; 0 if neither exists)."""
        return max((p.stat().st_mtime for p in (self.config, self.metrics) if p.is_file()), default=0.0)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints_root.is_dir():
            return []
        found = [(step, p) for p in self.checkpoints_root.iterdir()
                 if (step := checkpoint_step(p)) is not None and is_complete_checkpoint(p)]
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        dirs = self.checkpoints()
        return dirs[-1] if dirs else None

    # -- metrics.jsonl ----------------------------------------------------------------------

    def _lines(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(line, event) per logged event; a line that is not JSON (a run killed mid-write) is skipped."""
        if not self.metrics.is_file():
            return
        for i, line in enumerate(self.metrics.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                yield line, json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{self.metrics}:{i + 1}: skipping a line that is not JSON", InputWarning,
                              stacklevel=3)

    def events(self) -> Iterator[dict[str, Any]]:
        """The logged events, in order."""
        return (event for _, event in self._lines())

    def truncate_metrics(self, step: int) -> None:
        """Drop events logged after `step` (an interrupted run's tail, about to be replayed on resume)."""
        if self.metrics.is_file():
            kept = [line for line, event in self._lines() if event["step"] <= step]
            write_text(self.metrics, "".join(line + "\n" for line in kept))

    def read_summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else None


def checkpoint_step(path: Path) -> int | None:
    """N for a directory named step_<N>, else None."""
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_id(path: Path) -> str:
    """Tells apart two checkpoints of one step (an extension rewrites the later ones): a hash of the
    marker, which records the step, tokens and wall time of its writing."""
    return hashlib.sha256((Path(path) / CHECKPOINT_MARKER).read_bytes()).hexdigest()[:12]


def is_complete_checkpoint(path: Path) -> bool:
    """The one definition of a complete checkpoint: its marker, written last, is there."""
    return (Path(path) / CHECKPOINT_MARKER).is_file()


def locate(path: str | Path) -> tuple[RunDir, Path]:
    """(run directory, checkpoint) for a run directory (its newest complete checkpoint) or a checkpoint.

    Raises MissingFileError naming what was expected when `path` is neither.
    """
    path = Path(path)
    if is_complete_checkpoint(path):
        return RunDir(path.parent.parent), path
    ckpt = RunDir(path).latest_checkpoint()
    if ckpt is None:
        raise MissingFileError(
            f"{path} is neither a checkpoint directory (with {CHECKPOINT_MARKER}) nor a run directory with "
            f"a complete checkpoints/step_<N>; pass runs/<name> or runs/<name>/checkpoints/step_<N>")
    return RunDir(path), ckpt
