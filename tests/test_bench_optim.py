"""benchmarks.bench_optim's distributed part: DDP and FSDP2 Muon steps at 2 CPU ranks (gloo), 1 round."""

import argparse

import pytest
import torch

from benchmarks.bench_optim import bench_dist, hidden_matrices, parse_args, summary_lines
from optim.newton_schulz import default_ns_dtype


@pytest.fixture(scope="module")
def two_rank_rows() -> list[dict]:
    args = argparse.Namespace(preset="tiny", rounds=1, ranks=[2], threads_per_rank=1, modes=["ddp", "fsdp2"])
    return bench_dist(args)


@pytest.mark.slow
def test_both_modes_are_timed_on_every_rank(two_rank_rows):
    assert sorted((r["rank"], r["mode"]) for r in two_rank_rows) == [
        (0, "ddp"), (0, "fsdp2"), (1, "ddp"), (1, "fsdp2")]
    for row in two_rank_rows:
        for ms in ("ms", "cpu ms"):
            assert 0 < row[f"{ms} NS compute"] <= row[f"{ms} NS + collective"] <= row[f"{ms} Muon step"]
        assert row["ms NS compute vs 1 rank"] is None  # no 1-rank run to compare with


def test_traffic_per_rank_matches_the_layouts(two_rank_rows):
    """At 2 ranks each rank sends its rows of the matrices others own and receives the others' rows of
    its own, then the results back: one copy of every matrix per rank (tiny's rows are even). DDP's
    all_gather moves a half (padded to the larger one) out and one in: at least as much."""
    matrices = hidden_matrices("tiny", torch.device("cpu"))
    one_copy = sum(m.numel() for m in matrices) * default_ns_dtype(torch.device("cpu")).itemsize
    for row in two_rank_rows:
        if row["mode"] == "fsdp2":
            assert row["collective"] == "all_to_all_single" and row["bytes per step"] == one_copy
        else:
            assert row["collective"] == "all_gather" and one_copy <= row["bytes per step"] <= 1.2 * one_copy


def test_summary_compares_fsdp2_with_ddp(two_rank_rows):
    step_rows = [{"optimizer": "muonlab Muon", "cpu_ms_per_step": 2.0, "cpu_speedup_vs_torch_muon": 3.0,
                  "speedup_vs_torch_muon": 3.0}, {"optimizer": "AdamW", "cpu_ms_per_step": 1.0}]
    share = {"batch": 1, "seq": 8, "cpu_muon_share": 0.1, "cpu_ms_train_step": 20.0}
    lines = summary_lines(step_rows, share, two_rank_rows, torch.device("cpu"))
    assert len(lines) == 3 and lines[-1].startswith("2 rank(s), fsdp2 vs ddp")  # no 1-rank target lines
    assert "(all_to_all_single) vs" in lines[-1] and "(all_gather)" in lines[-1]


def test_modes_option():
    assert parse_args(["--device", "cpu", "--modes", "fsdp2, ddp"]).modes == ["ddp", "fsdp2"]
    assert parse_args(["--device", "cpu", "--modes", "fsdp2"]).modes == ["fsdp2"]
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--modes", "ddp,zero"])
