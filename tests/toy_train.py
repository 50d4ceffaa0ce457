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
# What routing groups to Muon gains (optim.muon), and a seed-by-routing noise of this amplitude.
GAIN = {"hidden": -0.4, "vo": -0.2, "qk": -0.195}
NOISE = 0.02


def toy_loss(adamw_lr: float, muon_lr: float | None, seed: int, muon: str = "hidden") -> float:
    """The toy final eval loss: a quadratic bowl in log10 of the two rates, plus the seed's shift, the
    routing's gain and a deterministic noise that differs by seed and routing."""
    rate = adamw_lr if muon_lr is None else muon_lr
    noise = NOISE * math.sin(2.1 * seed + 1.3 * sum(map(ord, muon))) if muon != "hidden" else 0.0
    return (3.0 + (math.log10(adamw_lr) - ADAMW_LOG10) ** 2 + 2 * (math.log10(rate) - MUON_LOG10) ** 2
            + SEED_SHIFT * seed + GAIN.get(muon, 0.0) + noise)


def main(args: list[str]) -> None:
    values = dict(a.split("=", 1) for a in args if "=" in a)
    run = Path(values["run.dir"])
    run.mkdir(parents=True, exist_ok=True)
    muon = values.get("optim.muon_lr", "null")
    routing, adamw, seed = values.get("optim.muon", "hidden"), values.get("optim.adamw_lr", 3e-3), \
        values.get("train.seed", 0)
    loss = toy_loss(float(adamw), None if muon == "null" else float(muon), int(seed), routing)
    # the settings a report groups runs by (rows: runs that differ only in seed)
    (run / "config.yaml").write_text(f"optim: {{muon: {routing}, adamw_lr: {adamw}, muon_lr: {muon}}}\n"
                                     f"train: {{seed: {seed}}}\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "eval/loss": loss}) + "\n")
    (run / "summary.json").write_text(json.dumps({"final/eval_loss": loss}))


if __name__ == "__main__":
    main(sys.argv[1:])
