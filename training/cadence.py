"""What is due at step N: logging, evaluation (and its spectra, curvature and QA) and checkpoints, in one
place."""

from __future__ import annotations

from dataclasses import dataclass

from training.config import MetricsSection, TrainSection


@dataclass(frozen=True)
class Due:
    """What to do after the optimizer step that completes step `step` (step 0: before any step)."""

    log: bool = False
    eval: bool = False
    spectra: bool = False
    curvature: bool = False
    qa: bool = False
    checkpoint: bool = False


class Cadence:
    """`Cadence(cfg.train, cfg.metrics).at(step)`: what is due once `step` steps are done.

    - log every `train.log_every` steps, and at every checkpoint;
    - evaluate every `train.eval_every` steps (0: only at the end), at the end, and at step 0;
    - spectra and QA at evaluations only: every `metrics.spectra_every` / `metrics.qa_every` steps
      (None: at every evaluation; 0: never), and at the end and at step 0 when not 0;
    - curvature along the last update at evaluations on multiples of `metrics.curvature_every` (0: never),
      on its own cadence, not only where spectra fall (it reads an update, so never at step 0);
    - checkpoint every `train.checkpoint_every` steps (0: only at the end), and at the end.
    """

    def __init__(self, train: TrainSection, metrics: MetricsSection) -> None:
        self.train, self.metrics = train, metrics

    def at(self, step: int) -> Due:
        t = self.train
        end = step == t.steps
        if step == 0:
            return Due(eval=True, spectra=self._optional(0, self.metrics.spectra_every),
                       qa=self._optional(0, self.metrics.qa_every))
        checkpoint = end or _every(step, t.checkpoint_every)
        evaluate = end or _every(step, t.eval_every)
        return Due(
            log=_every(step, t.log_every) or checkpoint,
            eval=evaluate,
            spectra=evaluate and self._optional(step, self.metrics.spectra_every),
            curvature=evaluate and _every(step, self.metrics.curvature_every),
            qa=evaluate and self._optional(step, self.metrics.qa_every),
            checkpoint=checkpoint,
        )

    def _optional(self, step: int, every: int | None) -> bool:
        """An optional eval metric: None = at every evaluation, 0 = never, else every `every` steps."""
        if every is None:
            return True
        return _every(step, every) or bool(every) and step == self.train.steps


def _every(step: int, every: int) -> bool:
    """Whether `step` is a multiple of `every` (0: never)."""
    return bool(every) and step % every == 0
