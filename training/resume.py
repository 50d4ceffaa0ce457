"""Where a run starts: fresh, from a checkpoint, extended, or not at all because it is complete.

A finished run is never silently changed. Rerunning its command finds it complete. Resuming with
a config that changes what the run computes is an error, and `train.steps` is such a key because
the schedule depends on it. Extending a run (`train.extend_to=N`) is allowed only from a
checkpoint whose every step had the learning rate an N-step run would have had. With
`optim.schedule=constant` that is any checkpoint. With `wsd` it is a checkpoint from before
the decay. With `cosine` it is never, since the whole curve depends on the length. An extended run
keeps its history (extensions.json), so its original command finds it complete (extended to N).

`train.resume=auto` continues from the newest checkpoint whose files match the sizes and sha256
its marker recorded; a newer one that does not is reported and skipped (the resumed run writes
that step again). When none verifies, nothing is deleted: the error says how to start over.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from common.errors import MissingFileError, UserError
from common.rundir import RunDir, checkpoint_step, is_complete_checkpoint
from training.checkpoint import checkpoint_problem
from training.config import ConfigError, RunConfig, load_config, schedule_of
from training.identity import resume_conflicts


@dataclass(frozen=True)
class Start:
    """The decision: `cfg` is what this attempt runs (train.steps = extend_to when extending)."""

    cfg: RunConfig
    checkpoint: Path | None = None  # None: from step 0
    complete: bool = False  # the run already finished with this config: nothing to do
    extending: bool = False
    extended_from: int | None = None  # extending: the steps of the run being extended
    extended_to: int | None = None  # complete, found by the command of a run since extended to this length
    rejected: tuple[str, ...] = ()  # one line per newer checkpoint that failed verification


def plan_start(cfg: RunConfig, run: RunDir) -> Start:
    """Decide where this attempt starts, or raise a ConfigError that says what to change."""
    extend = cfg.train.extend_to is not None
    if extend:  # saved as a plain run of the longer length
        cfg = _with_steps(cfg, cfg.train.extend_to, extend_to=None)
    mode = cfg.train.resume
    if mode == "none":
        if run.latest_checkpoint() or run.is_finished():
            raise ConfigError(f"{run.path} already holds a run and train.resume=none; choose another "
                              "run.name/run.dir, delete it, or resume with train.resume=auto")
        return Start(cfg)
    saved = load_config([str(run.config)]) if run.exists() else None
    if mode != "auto":
        ckpt = Path(mode)
        if not is_complete_checkpoint(ckpt):
            raise MissingFileError(f"train.resume={mode}: no such complete checkpoint directory "
                                   "(checkpoints/step_<N> with loop_state.json)")
        if (problem := checkpoint_problem(ckpt)) is not None:
            raise UserError(f"train.resume={mode}: the checkpoint fails verification ({problem}); "
                            "resume from another checkpoint (or train.resume=auto)")
        _check_same_run(saved, cfg, run)
        return Start(cfg, ckpt)
    if saved is None:
        return Start(cfg)
    if extend and saved.train.steps != cfg.train.steps:
        _check_same_run(saved, _with_steps(cfg, saved.train.steps), run)
        return Start(cfg, _exact_checkpoint(saved, cfg, run), extending=True,
                     extended_from=saved.train.steps)
    if not extend and _was_extended_from(run, cfg.train.steps, saved.train.steps):
        longer = saved.train.steps
        _check_same_run(saved, _with_steps(cfg, longer), run)
        if not run.is_finished():
            raise ConfigError(f"{run.path} is being extended from {cfg.train.steps} to {longer} steps; to "
                              f"resume the extension, add train.extend_to={longer}")
        return Start(_with_steps(cfg, longer), complete=True, extended_to=longer)
    _check_same_run(saved, cfg, run)
    if run.is_finished():
        return Start(cfg, complete=True)
    return _newest_verified(cfg, run)


def _newest_verified(cfg: RunConfig, run: RunDir) -> Start:
    """Resume from the newest checkpoint whose files match its marker; say which newer ones did not.

    When every checkpoint fails, nothing is deleted: the error says so and how to start over.
    """
    rejected: list[tuple[Path, str]] = []
    for ckpt in reversed(run.checkpoints()):
        if (problem := checkpoint_problem(ckpt)) is None:
            lines = tuple(f"{bad} fails verification ({why}); resuming from {ckpt.name}, the newest "
                          "checkpoint that passes" for bad, why in rejected)
            return Start(cfg, ckpt, rejected=lines)
        rejected.append((ckpt, problem))
    if rejected:
        raise UserError(f"every checkpoint of {run.path} fails verification (newest: {rejected[0][0].name}: "
                        f"{rejected[0][1]}); to start the run over, move {run.checkpoints_root} away")
    return Start(cfg)


def _was_extended_from(run: RunDir, steps: int, saved_steps: int) -> bool:
    """Whether the run in `run`, now of `saved_steps`, was once a run of `steps` that was extended."""
    return steps < saved_steps and any(e["from_steps"] == steps for e in run.read_extensions())


def _check_same_run(saved: RunConfig | None, cfg: RunConfig, run: RunDir) -> None:
    """Raise unless `cfg` computes what the saved config did."""
    if saved is None or not (diff := resume_conflicts(saved, cfg)):
        return
    hint = "use another run.name/run.dir (or none: the derived directory depends on the config)"
    if diff == ["train.steps"] and cfg.train.steps > saved.train.steps:
        hint = (f"to continue it to {cfg.train.steps} steps, keep train.steps={saved.train.steps} and add "
                f"train.extend_to={cfg.train.steps}")
    changes = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(cfg, k)!r})" for k in diff)
    raise ConfigError(f"{run.path} holds a run whose config differs in {changes}; {hint}")


def _with_steps(cfg: RunConfig, steps: int, **train: object) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps, **train))


def _get(cfg: RunConfig, dotted: str) -> object:
    value: object = cfg
    for part in dotted.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part, None)
    return value


def _exact_checkpoint(saved: RunConfig, cfg: RunConfig, run: RunDir) -> Path:
    """The newest checkpoint whose steps all had the learning rate of the longer run."""
    old, new = schedule_of(saved), schedule_of(cfg)
    for ckpt in reversed(run.checkpoints()):
        step = checkpoint_step(ckpt)
        if all(old.multiplier(s) == new.multiplier(s) for s in range(step)):
            return ckpt
    why = {
        "cosine": "the cosine schedule depends on train.steps from the first step on",
        "wsd": f"every kept checkpoint is past the start of the decay (step {old.decay_start})",
        "constant": "the run has no checkpoint",
    }[saved.optim.schedule]
    raise ConfigError(
        f"cannot extend {run.path} to {cfg.train.steps} steps exactly: {why}. Extension is exact with "
        "optim.schedule=constant, or wsd from a checkpoint before the decay (keep one with "
        "train.checkpoint_every/train.keep_checkpoints); otherwise start a new run with the longer "
        "train.steps")
