"""Reading a run's eval history between its eval points: where a loss is first reached, and the
value of another metric there. Linear interpolation between two logged evals, never extrapolation.

A history is [(step, value)] sorted by step, as `results.read_history` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass

Series = list[tuple[int, float]]

REACHED, NOT_REACHED, NO_BRACKET = "reached", "not reached", "too few evals"


@dataclass(frozen=True)
class Crossing:
    """Where a run's eval loss first reaches a target loss.

    `status` is REACHED (with `step` interpolated between the evals `bracket`), NOT_REACHED (no eval
    at or below the target), or NO_BRACKET (already at or below it at the first eval: there is no
    eval above the target to interpolate from).
    """

    status: str
    step: float | None = None
    bracket: tuple[int, int] | None = None


def first_crossing(loss: Series, target: float) -> Crossing:
    """The first step at which `loss` reaches `target`, linearly interpolated between the two evals
    around it (the last one above the target and the first one at or below it)."""
    for i, (step, value) in enumerate(loss):
        if value <= target:
            if i == 0:
                return Crossing(NO_BRACKET)
            prev_step, prev_value = loss[i - 1]
            frac = (prev_value - target) / (prev_value - value)
            return Crossing(REACHED, prev_step + frac * (step - prev_step), (prev_step, step))
    return Crossing(NOT_REACHED)


def value_at(series: Series, step: float) -> float | None:
    """`series` linearly interpolated at `step`; None outside its logged steps (no extrapolation)."""
    if not series or step < series[0][0] or step > series[-1][0]:
        return None
    for (s0, v0), (s1, v1) in zip(series, series[1:], strict=False):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (step - s0) / (s1 - s0) * (v1 - v0)
    return series[-1][1]  # a one-point series at exactly that step
