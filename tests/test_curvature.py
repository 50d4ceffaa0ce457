"""metrics.curvature: gain, penalty and nds along an update against finite differences of the loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metrics.curvature import curvature_metrics
from metrics.names import EVAL_LOSS, TRAIN_LOSS
from model import ModelConfig, Transformer
from optim.groups import group_of
from tests.test_train import base_args, corpus, read_metrics, run_train  # noqa: F401  (fixtures)


class _TinyLM(nn.Module):
    """Embedding -> up -> tanh -> down -> head, in float64, with Llama-style names: the finite
    differences need a model that computes in float64 throughout (the Transformer's CPU attention
    runs in fp32)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(16, 8)
        self.up_proj = nn.Linear(8, 12, bias=False)
        self.down_proj = nn.Linear(12, 8, bias=False)
        self.lm_head = nn.Linear(8, 16, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(idx)
        return self.lm_head(x + self.down_proj(torch.tanh(self.up_proj(x))))


GROUPS = {"up_proj.weight": "ffn_in", "down_proj.weight": "ffn_out", "lm_head.weight": "head"}


def _after_update(model: nn.Module, scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random update u of the GROUPS' matrices, applied: the model then holds w_after = w_before + u."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    update = {n: scale * torch.randn(params[n].shape, generator=gen, dtype=params[n].dtype) for n in GROUPS}
    with torch.no_grad():
        for n, u in update.items():
            params[n].add_(u)
    return update


def _loss_along(model, inputs, targets, update, names, t: float) -> float:
    """L(w_before + t u), u restricted to `names`."""
    params = {n: p.detach() - update[n] if n in update else p.detach() for n, p in model.named_parameters()}
    for n in names:
        params[n] = params[n] + t * update[n]
    with torch.no_grad():
        logits = functional_call(model, params, (inputs,))
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten()).item()


def test_gain_penalty_and_nds_match_finite_differences():
    torch.manual_seed(0)
    model = _TinyLM().double()
    idx = torch.randint(0, 16, (3, 7))
    inputs, targets = idx[:, :-1], idx[:, 1:]
    update = _after_update(model, 0.1)
    got = curvature_metrics(model, inputs, targets, update, GROUPS)
    assert set(got) == {f"curvature/{g}/{m}" for g in GROUPS.values() for m in ("gain", "penalty", "nds")}
    eps = 1e-3
    for name, group in GROUPS.items():
        plus, zero, minus = (_loss_along(model, inputs, targets, update, [name], t) for t in (eps, 0.0, -eps))
        gain = -(plus - minus) / (2 * eps)
        penalty = (plus - 2 * zero + minus) / eps**2
        assert abs(penalty) > 1e-4  # a real curvature to compare
        torch.testing.assert_close(got[f"curvature/{group}/gain"], gain, rtol=1e-5, atol=0)
        torch.testing.assert_close(got[f"curvature/{group}/penalty"], penalty, rtol=1e-4, atol=0)
        norm2 = update[name].square().sum().item()
        assert got[f"curvature/{group}/nds"] == pytest.approx(got[f"curvature/{group}/penalty"] / norm2)


def test_transformer_runs_double_backward_and_is_left_unchanged():
    """The HVP runs through the real model (attention's math kernel); a zero update is flat."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                                    ffn_hidden=24, max_seq_len=8))
    idx = torch.randint(0, 32, (2, 9))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    hidden = {n: p for n, p in model.named_parameters()
              if p.ndim == 2 and group_of(n) not in ("embed", "head")}
    groups = {n: group_of(n) for n in hidden}
    update = {n: 1e-2 * torch.randn_like(p) for n, p in hidden.items()}
    got = curvature_metrics(model, idx[:, :-1], idx[:, 1:], update, groups)
    assert {k.split("/")[1] for k in got} == {"q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out"}
    assert all(torch.isfinite(torch.tensor(v)) for v in got.values())
    assert any(v != 0 for k, v in got.items() if k.endswith("/penalty"))
    zeros = {n: torch.zeros_like(u) for n, u in update.items()}
    zero = curvature_metrics(model, idx[:, :-1], idx[:, 1:], zeros, groups)
    assert all(v == 0.0 for v in zero.values())
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


@pytest.mark.slow
def test_train_logs_curvature_at_spectra_evaluations(base_args, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    run_train([*base_args, "metrics.curvature_every=10", "train.eval_every=5", f"run.dir={run}"])
    events = {e["step"]: e for e in read_metrics(run) if any(k.startswith("spectra/") for k in e)}
    assert not any(k.startswith("curvature/") for k in events[5])  # spectra, but not a curvature step
    for step in (10, 20):
        for group in ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out"):
            gain, penalty, nds = (events[step][f"curvature/{group}/{m}"] for m in ("gain", "penalty", "nds"))
            assert math.isfinite(gain) and math.isfinite(penalty) and math.isfinite(nds)


@pytest.mark.slow
def test_curvature_keeps_its_own_cadence_and_leaves_training_unchanged(base_args, tmp_path):  # noqa: F811
    """curvature_every=10 with spectra only every 20 steps still reads curvature at step 10, and reading
    it changes nothing the run trains: its losses equal those of the same run without it, bit for bit."""
    runs = {every: tmp_path / f"curvature{every}" for every in (0, 10)}
    for every, run in runs.items():
        run_train([*base_args, f"metrics.curvature_every={every}", "metrics.spectra_every=20",
                   "train.eval_every=5", f"run.dir={run}"])
    events = read_metrics(runs[10])
    curvature_steps = sorted(e["step"] for e in events if "curvature/v/nds" in e)
    spectra_steps = sorted(e["step"] for e in events if any(k.startswith("spectra/") for k in e))
    assert curvature_steps == [10, 20]
    assert 10 not in spectra_steps
    losses = [[(e["step"], k, e[k]) for e in read_metrics(run) for k in (EVAL_LOSS, TRAIN_LOSS) if k in e]
              for run in runs.values()]
    assert len(losses[0]) >= 8 and losses[0] == losses[1]
