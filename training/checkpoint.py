"""Atomic checkpoints: `checkpoints/step_<N>/` written through accelerate, then renamed into place.

A checkpoint holds what `accelerator.save_state` writes (model weights as model.safetensors, RNG
states of every process, registered objects such as the optimizer and the loop state). It is
written to `.tmp_step_<N>` and renamed only once complete, so a directory named `step_<N>` is
always whole; older ones beyond `keep` are removed after the new one is in place.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

_STEP_DIR = re.compile(r"^step_(\d+)$")
COMPLETE_MARKER = "loop_state.json"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / COMPLETE_MARKER).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, loop_state: dict, keep: int) -> Path:
    """Save the full training state at `step`; every process must call this."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # The marker is written last: its presence is what makes a checkpoint complete.
        (tmp / COMPLETE_MARKER).write_text(json.dumps(loop_state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, ckpt: Path) -> dict:
    """Restore the training state saved in `ckpt`; returns its loop state."""
    ckpt = Path(ckpt)
    if not (ckpt / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {COMPLETE_MARKER}); "
                                "pass a checkpoints/step_<N> directory or train.resume=auto")
    accelerator.load_state(str(ckpt))
    return json.loads((ckpt / COMPLETE_MARKER).read_text())
