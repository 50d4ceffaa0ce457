"""Muon's variables as switches, each against a reference: the exact polar factor (SVD), Polar Express
(the paper's Algorithm 1), the momentum order, the momentum warmup and NorMuon's row normalization."""

import copy

import pytest
import torch

from optim.muon import Muon, momentum_at, muon_update, orthogonalize
from optim.newton_schulz import DEFAULT_COEFFICIENTS, POLAR_EXPRESS_COEFFICIENTS, polar_factor

# Polar Express, Algorithm 1 of arXiv 2505.16932 (degree 5), as published, in fp32
PUBLISHED = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]


def _algorithm1(G: torch.Tensor, steps: int) -> torch.Tensor:
    coeffs = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in PUBLISHED[:-1]] + [PUBLISHED[-1]]
    X = G.float()
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-7)
    for a, b, c in coeffs[:steps] + [coeffs[-1]] * max(0, steps - len(coeffs)):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


def _singular_values(X: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(X.double())


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (3, 16, 16)])
def test_exact_is_the_svd_polar_factor(shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    got = orthogonalize(G, method="exact", dtype=torch.float32)
    torch.testing.assert_close(got, U @ Vh, rtol=0, atol=1e-5)
    s = _singular_values(got)
    torch.testing.assert_close(s, torch.ones_like(s), rtol=0, atol=1e-5)


def test_exact_keeps_zero_directions_zero():
    G = torch.zeros(8, 12)
    assert polar_factor(G).abs().max() == 0
    low_rank = torch.randn(8, 2) @ torch.randn(2, 12)
    assert torch.linalg.matrix_rank(polar_factor(low_rank)) == 2


@pytest.mark.parametrize(("shape", "steps"), [((32, 64), 5), ((64, 32), 5), ((2, 16, 48), 10)])
def test_polar_express_matches_algorithm_1(shape, steps):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got = orthogonalize(G, steps=steps, coefficients=POLAR_EXPRESS_COEFFICIENTS, dtype=torch.float32)
    torch.testing.assert_close(got, _algorithm1(G, steps), rtol=0, atol=2e-5)


def test_polar_express_converges_where_quintic_plateaus():
    """Same 5 steps, a random matrix: Polar Express's singular values are closer to 1 than the quintic's
    (which stay in ~[0.7, 1.2] by design), and more steps take them to 1."""
    G = torch.randn(64, 128, generator=torch.Generator().manual_seed(2))
    quintic = _singular_values(orthogonalize(G, coefficients=DEFAULT_COEFFICIENTS, dtype=torch.float32))
    polar = _singular_values(orthogonalize(G, coefficients=POLAR_EXPRESS_COEFFICIENTS, dtype=torch.float32))
    assert (polar - 1).abs().max() < (quintic - 1).abs().max()
    many = _singular_values(orthogonalize(G, steps=10, coefficients=POLAR_EXPRESS_COEFFICIENTS,
                                          dtype=torch.float32))
    assert (many - 1).abs().max() < 1e-3


def _hand_step(W, G, buf, order: str, lr=0.02, mu=0.95, wd=0.1):
    """One Muon step written out: Nesterov momentum and orthogonalization in either order."""
    rows, cols = W.shape
    scale = lr * max(1.0, rows / cols) ** 0.5
    ortho = lambda X: orthogonalize(X, dtype=torch.float32)  # noqa: E731
    if order == "momentum_then_orthogonalize":
        buf = mu * buf + (1 - mu) * G
        update = ortho((1 - mu) * G + mu * buf)
    else:
        O = ortho(G)
        buf = mu * buf + (1 - mu) * O
        update = (1 - mu) * O + mu * buf
    return W * (1 - lr * wd) - scale * update, buf


@pytest.mark.parametrize("order", ["momentum_then_orthogonalize", "orthogonalize_then_momentum"])
def test_momentum_order_against_a_hand_written_step(order):
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=gen) for s in ((16, 24), (24, 16))]
    params = [p.clone().requires_grad_() for p in start]
    opt = Muon(params, lr=0.02, weight_decay=0.1, momentum=0.95, ns_dtype=torch.float32, momentum_order=order)
    hand = [(p.clone(), torch.zeros_like(p)) for p in start]
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        hand = [_hand_step(W, g, buf, order) for (W, buf), g in zip(hand, grads, strict=True)]
    for p, (W, buf) in zip(params, hand, strict=True):
        torch.testing.assert_close(p.detach(), W, rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=0, atol=1e-6)


def test_momentum_warmup_follows_modded_nanogpt():
    assert [momentum_at(0.95, t, 300) for t in (0, 150, 300, 600)] == pytest.approx([0.85, 0.9, 0.95, 0.95])
    assert momentum_at(0.95, 0, 0) == 0.95
    gen = torch.Generator().manual_seed(4)
    W = torch.randn(8, 12, generator=gen)
    p, buf, alone = W.clone().requires_grad_(), torch.zeros(8, 12), W.clone()
    opt = Muon([p], lr=0.02, ns_dtype=torch.float32, momentum_warmup_steps=4)
    for t in range(6):
        p.grad = torch.randn(8, 12, generator=gen)
        muon_update(alone, p.grad.clone(), buf, lr=0.02, weight_decay=0.1, momentum=momentum_at(0.95, t, 4),
                    ns_dtype=torch.float32)
        opt.step()
    assert int(opt.state[p]["step"]) == 6
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=0, atol=0)
    torch.testing.assert_close(p.detach(), alone, rtol=0, atol=1e-6)


def test_normuon_against_its_normalization():
    """NorMuon (arXiv 2510.05491, microsoft/dion): O / sqrt(EMA of row mean squares), rescaled to ||O||_F."""
    gen = torch.Generator().manual_seed(5)
    W, beta2, lr = torch.randn(16, 24, generator=gen), 0.95, 0.02
    p = W.clone().requires_grad_()
    opt = Muon([p], lr=lr, weight_decay=0.0, ns_dtype=torch.float32, normuon_beta2=beta2)
    hand, buf, v = W.clone(), torch.zeros(16, 24), torch.zeros(16, 1)
    for _ in range(3):
        G = torch.randn(16, 24, generator=gen)
        p.grad = G
        opt.step()
        buf = 0.95 * buf + 0.05 * G
        O = orthogonalize(0.05 * G + 0.95 * buf, dtype=torch.float32)
        v = beta2 * v + (1 - beta2) * O.square().mean(dim=1, keepdim=True)
        N = O / (v.sqrt() + 1e-8)
        hand = hand - lr * N * (O.norm() / N.norm())
    # fp32 sums of squares by two kernel paths: a few ulps apart (1.004e-6 relative on a Xeon); a wrong
    # normalization or EMA would be off by orders of magnitude more.
    torch.testing.assert_close(opt.state[p]["second_moment"], v, rtol=1e-5, atol=0)
    torch.testing.assert_close(p.detach(), hand, rtol=0, atol=1e-6)


@pytest.mark.parametrize("switches", [
    dict(ns_coefficients=POLAR_EXPRESS_COEFFICIENTS), dict(orthogonalization="exact"),
    dict(momentum_order="orthogonalize_then_momentum"), dict(normuon_beta2=0.9),
])
def test_batched_step_equals_the_rule_per_matrix(switches):
    """Each switch goes through Muon's batched engine (a tall matrix in its wide twin's bucket, per-head
    blocks) as through `muon_update` on each matrix alone."""
    shapes, heads = [(24, 40), (40, 24), (32, 16)], [1, 1, 4]
    gen = torch.Generator().manual_seed(6)
    start = [torch.randn(s, generator=gen) for s in shapes]
    batched = [p.clone().requires_grad_() for p in start]
    opt = Muon([{"params": batched[:2]}, {"params": batched[2:], "split_heads": 4}], lr=0.02,
               ns_dtype=torch.float32, adjust_lr_fn="match_rms_adamw", **switches)
    alone, bufs = [p.clone() for p in start], [torch.zeros_like(p) for p in start]
    rule = {k: v for k, v in switches.items() if k != "normuon_beta2"}
    second = [torch.zeros(s[0], 1) for s in shapes] if "normuon_beta2" in switches else [None] * 3
    for _ in range(3):
        for i, p in enumerate(batched):
            p.grad = torch.randn(p.shape, generator=gen)
            muon_update(alone[i], p.grad.clone(), bufs[i], lr=0.02, weight_decay=0.1, momentum=0.95,
                        adjust_lr_fn="match_rms_adamw", ns_dtype=torch.float32, heads=heads[i],
                        second_moment=second[i], normuon_beta2=switches.get("normuon_beta2", 0.95), **rule)
        opt.step()
    for p, a, buf in zip(batched, alone, bufs, strict=True):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=0, atol=1e-6)
        torch.testing.assert_close(p.detach(), a, rtol=0, atol=2e-6)


def test_checkpoint_from_before_the_switches_loads():
    """A state saved before the switches existed (groups without their keys) loads with the defaults."""
    W = torch.randn(8, 12).requires_grad_()
    opt = Muon([W], lr=0.02)
    W.grad = torch.randn(8, 12)
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for key in ("orthogonalization", "momentum_order", "momentum_warmup_steps", "normuon_beta2"):
            del group[key]
    fresh = Muon([W], lr=0.02)
    fresh.load_state_dict(old)
    assert fresh.param_groups[0]["momentum_order"] == "momentum_then_orthogonalize"
    fresh.step()
