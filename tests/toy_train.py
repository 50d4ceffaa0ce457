"""A stand-in for train.py in runner tests: it "trains" instantly, its final eval loss a known function of
the learning rates and the seed, and writes what train.py writes for the sweep and the report."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

# The toy optimum: adamw_lr = 10**ADAMW_LOG10, Muon's rate 10**MUON_LOG10 (muon_lr: null ties it to
# adamw_lr, as optim.muon_lr does); each seed shifts the loss by SEED_SHIFT * seed.
ADAMW_LOG10, MUON_LOG10, SEED_SHIFT = -2.5, -1.7, 0.01


def toy_loss(adamw_lr: float, muon_lr: float | None, seed: int) -> float:
    """The toy final eval loss: a quadratic bowl in log10 of the two rates, plus the seed's shift."""
    muon = adamw_lr if muon_lr is None else muon_lr
    return (3.0 + (math.log10(adamw_lr) - ADAMW_LOG10) ** 2 + 2 * (math.log10(muon) - MUON_LOG10) ** 2
            + SEED_SHIFT * seed)


def main(args: list[str]) -> None:
    values = dict(a.split("=", 1) for a in args if "=" in a)
    run = Path(values["run.dir"])
    run.mkdir(parents=True, exist_ok=True)
    muon = values.get("optim.muon_lr", "null")
    loss = toy_loss(float(values.get("optim.adamw_lr", 3e-3)), None if muon == "null" else float(muon),
                    int(values.get("train.seed", 0)))
    (run / "config.yaml").write_text(f"train: {{seed: {values.get('train.seed', 0)}}}\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "eval/loss": loss}) + "\n")
    (run / "summary.json").write_text(json.dumps({"final/eval_loss": loss}))


if __name__ == "__main__":
    main(sys.argv[1:])
