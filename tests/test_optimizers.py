"""The optimizer zoo: each optimizer against a reference step, against torch's own where torch has one,
SignGD as Signum without momentum, state dicts round-tripping through the combined optimizer."""

import copy

import pytest
import torch

from model import ModelConfig, Transformer
from optim.build import build_optimizer
from optim.config import OptimConfig
from optim.registry import SIGN_LR_RATIO, optimizer_lr
from optim.sign import Lion, Signum

STEPS = 4


def _grads(shape=(6, 5), seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(STEPS)]


def _run(opt_class, grads, **kw) -> torch.Tensor:
    p = torch.nn.Parameter(torch.ones(grads[0].shape))
    opt = opt_class([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_signum_against_reference_and_signgd():
    grads, lr, mu, wd = _grads(), 0.01, 0.9, 0.1
    w, m = torch.ones(6, 5), torch.zeros(6, 5)
    for g in grads:
        m = mu * m + (1 - mu) * g
        w = w * (1 - lr * wd) - lr * torch.sign(m)
    torch.testing.assert_close(_run(Signum, grads, lr=lr, momentum=mu, weight_decay=wd), w, rtol=0, atol=1e-7)
    # momentum 0: SignGD, every element moves by exactly lr per step
    signgd = torch.ones(6, 5) - lr * sum(torch.sign(g) for g in grads)
    torch.testing.assert_close(_run(Signum, grads, lr=lr, momentum=0.0), signgd, rtol=0, atol=1e-7)


def test_lion_against_reference():
    grads, lr, (b1, b2), wd = _grads(), 0.01, (0.9, 0.99), 0.1
    w, m = torch.ones(6, 5), torch.zeros(6, 5)
    for g in grads:
        w = w * (1 - lr * wd) - lr * torch.sign(b1 * m + (1 - b1) * g)
        m = b2 * m + (1 - b2) * g
    got = _run(Lion, grads, lr=lr, betas=(b1, b2), weight_decay=wd)
    torch.testing.assert_close(got, w, rtol=0, atol=1e-7)


def _model(seed: int = 0, n_layers: int = 2) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
                                   ffn_hidden=48, max_seq_len=16))


def _train(model, opt, steps: int, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 64, (2, 9), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# Sign-like updates amplify rounding differences, so the references use the same (fused) AdamW kernel.
@pytest.mark.parametrize(("optimizer", "reference"), [
    ("adamw", lambda ps, cfg: torch.optim.AdamW(ps, lr=cfg.adamw_lr, betas=(0.9, 0.95), weight_decay=0.1,
                                                fused=True)),
    ("adam0", lambda ps, cfg: torch.optim.AdamW(ps, lr=SIGN_LR_RATIO * cfg.adamw_lr, betas=(0.0, 0.0),
                                                weight_decay=0.1, fused=True)),
    ("sgd", lambda ps, cfg: torch.optim.SGD(ps, lr=cfg.adamw_lr, momentum=0.9, weight_decay=0.1)),
])
def test_routed_hidden_matrices_match_torch(optimizer, reference):
    """The hidden matrices routed to `optimizer` move as torch's optimizer moves them (same lr, wd)."""
    cfg = OptimConfig(route=f"hidden:{optimizer} default:adamw", adamw_lr=1e-2)
    model, twin = _model(), _model()
    opt = build_optimizer(model, cfg)
    hidden = [p for n, p in twin.named_parameters()
              if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    rest = [p for p in twin.parameters() if all(p is not h for h in hidden)]
    groups = {g["name"]: g for g in opt.param_groups}
    ref = reference(hidden, cfg)
    ref_rest = torch.optim.AdamW([{"params": [p for p in rest if p.ndim == 2]},
                                  {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}],
                                 lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    assert groups[optimizer]["lr"] == optimizer_lr(optimizer, cfg)
    _train(model, opt, 3, seed=1)
    _train(twin, _Both(ref, ref_rest), 3, seed=1)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b), name


class _Both:
    def __init__(self, *opts):
        self.opts = opts

    def zero_grad(self):
        for o in self.opts:
            o.zero_grad()

    def step(self):
        for o in self.opts:
            o.step()


def test_adam0_is_signgd_up_to_eps():
    """Adam with beta1 = beta2 = 0 steps by g / (|g| + eps): SignGD wherever |g| >> eps."""
    grads, lr, eps = [g * 1e-2 for g in _grads()], 0.01, 1e-8
    adam0 = _run(torch.optim.Adam, grads, lr=lr, betas=(0.0, 0.0), eps=eps)
    reference = torch.ones(6, 5) - lr * sum(g / (g.abs() + eps) for g in grads)
    torch.testing.assert_close(adam0, reference, rtol=0, atol=2e-7)  # fp32 rounding of ~1
    signgd = _run(Signum, grads, lr=lr, momentum=0.0)
    smallest = min(g.abs().min() for g in grads)
    torch.testing.assert_close(adam0, signgd, rtol=0, atol=2e-7 + lr * STEPS * eps / smallest)


def test_sign_lr_ratio_matches_adamw_update_rms():
    """On noise-dominated gradients AdamW's (0.9, 0.95) update has RMS ~0.23 x lr; a sign update 1 x lr."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(256, 256))
    opt = torch.optim.AdamW([p], lr=1.0, betas=(0.9, 0.95), weight_decay=0.0)
    rms = []
    for step in range(200):
        before = p.detach().clone()
        p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        if step >= 100:
            rms.append((p.detach() - before).square().mean().sqrt().item())
    assert 0.8 * SIGN_LR_RATIO < sum(rms) / len(rms) < 1.4 * SIGN_LR_RATIO


@pytest.mark.parametrize("spec", [
    "hidden:signum default:adamw", "hidden:lion default:adamw", "hidden:adam0 default:adamw",
    "vo:normuon ffn:muon qk:sgd default:adamw",
])
def test_state_dict_round_trip_gives_identical_next_steps(spec):
    cfg = OptimConfig(route=spec, momentum_warmup_steps=5)
    model = _model()
    opt = build_optimizer(model, cfg)
    _train(model, opt, 3, seed=1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    continued = _train(model, opt, 3, seed=2)
    resumed_model = _model(seed=5)
    resumed_model.load_state_dict(saved_model)
    resumed_opt = build_optimizer(resumed_model, cfg)
    resumed_opt.load_state_dict(saved_opt)
    assert _train(resumed_model, resumed_opt, 3, seed=2) == continued
    for name, value in resumed_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    other = build_optimizer(_model(), OptimConfig(route="hidden:muon default:adamw"))
    with pytest.raises(ValueError, match="routing .* differs from the checkpoint's"):
        other.load_state_dict(saved_opt)


def test_legacy_state_dict_keys_for_the_muon_shorthand():
    """optim.muon runs keep the {"muon", "base"} checkpoint format, so their checkpoints resume."""
    opt = build_optimizer(_model(), OptimConfig(muon="vo", base="sgd"))
    assert set(opt.state_dict()) == {"muon", "base"} and isinstance(opt.base, torch.optim.SGD)
    routed = build_optimizer(_model(), OptimConfig(route="vo:muon default:sgd", base="sgd"))
    routed.load_state_dict(opt.state_dict())
