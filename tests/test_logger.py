"""metrics.jsonl writing helpers and the wandb run identity."""

import json
import math

from common.rundir import RunDir
from training.logger import _jsonable, wandb_run_id


def test_wandb_run_id_is_per_directory(tmp_path):
    a, b = tmp_path / "grid1" / "adamw", tmp_path / "grid2" / "adamw"
    assert wandb_run_id(a) == wandb_run_id(a)
    assert wandb_run_id(a) != wandb_run_id(b)
    assert wandb_run_id(a).startswith("adamw-")


def test_truncate_after_drops_the_replayed_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    events = [{"step": s, "train/loss": 1.0 / (s + 1)} for s in (0, 5, 10, 15)]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    RunDir(tmp_path).truncate_metrics(10)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 5, 10]


def test_non_finite_values_become_null():
    assert _jsonable(math.nan) is None and _jsonable(math.inf) is None
    assert _jsonable(2.5) == 2.5
