"""optim.build / optim.combined: param groups, lrs, weight decay, the SGD base and exact resume."""

import copy

import pytest
import torch

from model import ModelConfig, Transformer
from optim.build import build_optimizer
from optim.combined import CombinedOptimizer
from optim.config import OptimConfig
from optim.muon import Muon


def _cfg(**overrides) -> OptimConfig:
    base = dict(muon="hidden", base="adamw", adamw_lr=3e-3, muon_lr=None, embed_lr=None, head_lr=None,
                betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5,
                adjust_lr_fn="match_rms_adamw", per_head=False, sgd_momentum=0.9)
    return OptimConfig(**(base | overrides))


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   ffn_hidden=48, max_seq_len=16))


def _train(model: Transformer, opt: CombinedOptimizer, steps: int, seed: int, fixed: bool = False
           ) -> list[float]:
    """Train on random token batches (one fixed batch if `fixed`); return the losses."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 64, (2, 9), generator=gen)
    losses = []
    for _ in range(steps):
        idx = batch if fixed else torch.randint(0, 64, (2, 9), generator=gen)
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _groups(opt: CombinedOptimizer) -> dict[str, dict]:
    return {g["name"]: g for g in opt.param_groups}


def test_groups_lrs_and_weight_decay():
    model = _model()
    opt = build_optimizer(model, _cfg(muon="vo,ffn", muon_lr=0.02, embed_lr=0.05, head_lr=0.004))
    groups = _groups(opt)
    assert set(groups) == {"muon", "adamw", "adamw_embed", "adamw_head", "adamw_scalar"}
    assert isinstance(opt.muon, Muon) and isinstance(opt.base, torch.optim.AdamW)
    assert groups["muon"]["lr"] == groups["muon"]["base_lr"] == 0.02
    assert groups["muon"]["adjust_lr_fn"] == "match_rms_adamw"
    assert groups["adamw"]["lr"] == 3e-3 and groups["adamw_embed"]["lr"] == 0.05
    assert groups["adamw_head"]["lr"] == 0.004
    assert groups["adamw_scalar"]["weight_decay"] == 0.0
    assert all(groups[n]["weight_decay"] == 0.1 for n in ("muon", "adamw", "adamw_embed", "adamw_head"))
    assert opt.base.param_groups[0]["betas"] == (0.9, 0.95) and opt.base.defaults["fused"]
    muon_params = {id(p) for p in groups["muon"]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i].split(".")[-2] for i in muon_params} == {"v_proj", "o_proj", "up_proj", "gate_proj",
                                                              "down_proj"}
    assert len(opt.routing) == len(list(model.parameters()))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_muon_lr_defaults_to_adamw_lr_and_sgd_base():
    opt = build_optimizer(_model(), _cfg(base="sgd", adamw_lr=0.01))
    groups = _groups(opt)
    assert groups["muon"]["lr"] == 0.01
    assert isinstance(opt.base, torch.optim.SGD) and groups["sgd_embed"]["momentum"] == 0.9
    assert {e.optimizer for e in opt.routing} == {"muon", "sgd"}
    with pytest.raises(ValueError, match="optim.base='lion' is unknown; choose one of adamw, sgd"):
        build_optimizer(_model(), _cfg(base="lion"))


def test_none_and_all_routing_have_one_part():
    assert build_optimizer(_model(), _cfg(muon="none")).muon is None
    with pytest.warns(UserWarning):
        opt = build_optimizer(_model(), _cfg(muon="all"))
    assert set(_groups(opt)) == {"muon", "muon_embed", "muon_head", "adamw_scalar"}


def test_per_head_groups_split_q_by_heads_and_kv_by_kv_heads():
    opt = build_optimizer(_model(), _cfg(per_head=True))
    groups = _groups(opt)
    assert groups["muon_heads4"]["split_heads"] == 4 and len(groups["muon_heads4"]["params"]) == 2  # q
    assert groups["muon_heads2"]["split_heads"] == 2 and len(groups["muon_heads2"]["params"]) == 4  # k, v
    assert groups["muon"]["split_heads"] is None
    losses = _train(_model(), build_optimizer(_model(), _cfg(per_head=True)), 2, seed=0)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_lr_set_through_param_groups_takes_effect():
    model = _model()
    opt = build_optimizer(model, _cfg())
    before = copy.deepcopy(model.state_dict())
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * 0.0
    _train(model, opt, 1, seed=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_training_lowers_loss():
    model = _model()
    losses = _train(model, build_optimizer(model, _cfg(adamw_lr=1e-2)), 15, seed=0, fixed=True)
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_state_dict_round_trip_gives_identical_next_steps(base):
    cfg = _cfg(base=base, muon="vo,ffn_out")
    model = _model()
    opt = build_optimizer(model, cfg)
    _train(model, opt, 3, seed=1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert set(saved_opt) == {"muon", "base"}
    continued = _train(model, opt, 3, seed=2)

    resumed_model = _model(seed=123)  # different init, overwritten by the checkpoint
    resumed_model.load_state_dict(saved_model)
    resumed_opt = build_optimizer(resumed_model, cfg)
    resumed_opt.load_state_dict(saved_opt)
    resumed = _train(resumed_model, resumed_opt, 3, seed=2)
    assert resumed == continued
    for name, value in resumed_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_load_state_dict_with_other_routing_is_a_clear_error():
    state = build_optimizer(_model(), _cfg(muon="none")).state_dict()
    with pytest.raises(ValueError, match="routing .* differs from the checkpoint's"):
        build_optimizer(_model(), _cfg(muon="hidden")).load_state_dict(state)


def test_closure_and_zero_grad():
    model = _model()
    opt = build_optimizer(model, _cfg())
    idx = torch.randint(0, 64, (2, 9))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(idx[:, :-1]).logsumexp(-1).mean()
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure))
    assert len(opt.state) == len(list(model.parameters()))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
