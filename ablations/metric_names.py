"""The final metrics an ablation report reads, as named in a run's summary, and the equivalence margins a
grid file may set for them (`equivalence_margin:`)."""

from __future__ import annotations

from metrics.names import FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS, QA_MEAN, QA_TAIL, TAIL_GAP, TAIL_LOSS

# The report's names for the final losses (the other metrics' names are the logged ones, metrics/names.py).
EVAL_LOSS, TRAIN_LOSS = FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS
# The final metrics each row gets statistics and tests for.
FINAL_METRICS = (EVAL_LOSS, TAIL_LOSS, TAIL_GAP, QA_TAIL, QA_MEAN, TRAIN_LOSS)
# The tail metrics compared at matched loss (iso-loss, annealed, longer AdamW).
HEADLINE = (TAIL_LOSS, TAIL_GAP, QA_TAIL, QA_MEAN)
# Per-group normalized directional sharpness of the last update (metrics/curvature.py), also read and
# tested at the iso-loss targets: the curvature account of Muon's advantage (arXiv 2606.04662).
CURVATURE_NDS = r"curvature/[^/]+/nds"

# Equivalence margins (TOST), in each metric's units, unless the grid file's `equivalence_margin:` sets
# them: 0.02 nats of final loss is ~5% of the smallest Muon-over-AdamW gain measured so far (0.38 nats,
# docs/results) and about one seed's std of a tuned final loss at the tiny scale; the rarest-bucket
# loss and the tail-head gap are ~3x noisier per seed (0.05 nats); QA accuracy 0.05 = 5 points.
DEFAULT_MARGINS = {EVAL_LOSS: 0.02, TRAIN_LOSS: 0.02, TAIL_LOSS: 0.05, TAIL_GAP: 0.05, QA_TAIL: 0.05,
                   QA_MEAN: 0.05}
