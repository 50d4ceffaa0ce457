"""optim.muon: Newton–Schulz orthogonalization and the Muon optimizer against torch.optim.Muon."""

import pytest
import torch

from optim import newton_schulz
from optim.muon import Muon, adjusted_lr, muon_update, orthogonalize


def _polar(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    return U @ Vh


def _well_conditioned(m: int, n: int, seed: int) -> torch.Tensor:
    """U diag(s) V^T with singular values spread over [0.1, 1] (condition number 10)."""
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen))
    V, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen))
    return U @ torch.diag(torch.linspace(0.1, 1.0, min(m, n))) @ V.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (64, 64)])
def test_orthogonalize_is_close_to_polar_factor(shape, dtype):
    G = _well_conditioned(*shape, seed=0)
    X = orthogonalize(G, dtype=dtype).float()
    assert X.shape == G.shape
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.3 and s.max() < 1.6, (s.min(), s.max())
    P = _polar(G)
    cosine = (X * P).sum() / (X.norm() * P.norm())
    assert cosine > 0.9


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_orthogonalize_batched_equals_per_matrix_and_keeps_input(dtype, atol):
    G = torch.randn(2, 3, 40, 24, generator=torch.Generator().manual_seed(1))
    before = G.clone()
    X = orthogonalize(G, dtype=dtype)
    assert X.shape == G.shape and X.dtype == dtype
    torch.testing.assert_close(G, before, rtol=0, atol=0)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(X[i, j], orthogonalize(G[i, j], dtype=dtype), rtol=0, atol=atol)


def test_default_dtype_follows_the_hardware(monkeypatch):
    def default_with(capabilities: dict, isa: str | None = None) -> torch.dtype:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
        if isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        newton_schulz.cpu_has_fast_bf16.cache_clear()
        return newton_schulz.default_ns_dtype(torch.device("cpu"))

    try:
        assert default_with({"avx512_bf16": True}) == torch.bfloat16
        assert default_with({"amx_bf16": True}) == torch.bfloat16
        assert default_with({"avx2": True}) == torch.float32  # bf16 emulated: fp32 is faster
        assert default_with({"avx512_bf16": True}, isa="AVX2") == torch.float32
        assert default_with({"avx512_bf16": True}, isa="avx512_core_bf16") == torch.bfloat16
    finally:
        newton_schulz.cpu_has_fast_bf16.cache_clear()
    assert newton_schulz.default_ns_dtype(torch.device("cuda")) == torch.bfloat16
    G = torch.randn(8, 16)
    assert orthogonalize(G).dtype == newton_schulz.default_ns_dtype(G.device)


def test_orthogonalize_dtype_and_bad_input():
    G = torch.randn(8, 16)
    assert orthogonalize(G, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert orthogonalize(torch.zeros(8, 16)).abs().max() == 0  # eps floor: no NaN on a zero gradient
    with pytest.raises(ValueError, match=r"\[\.\.\., m, n\]"):
        orthogonalize(torch.randn(16))
    with pytest.raises(ValueError, match="coefficients"):
        orthogonalize(G, coefficients=(1.0, 2.0))


def test_adjusted_lr_matches_both_conventions():
    assert adjusted_lr(0.1, "original", 64, 16) == pytest.approx(0.1 * 2.0)
    assert adjusted_lr(0.1, None, 16, 64) == pytest.approx(0.1)
    assert adjusted_lr(0.1, "match_rms_adamw", 16, 64) == pytest.approx(0.1 * 0.2 * 8.0)


SHAPES = [(32, 64), (64, 32), (32, 64), (48, 48)]


def _run_pair(ours_kw: dict, steps: int = 5, **kw) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
    """Run torch.optim.Muon and ours on identical params and gradients; return both params and start."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    ref = [p.clone().requires_grad_() for p in start]
    ours = [p.clone().requires_grad_() for p in start]
    opt_ref, opt_ours = torch.optim.Muon(ref, **kw), Muon(ours, **kw, **ours_kw)
    for _ in range(steps):
        for a, b in zip(ref, ours, strict=True):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_ours.step()
    return ref, ours, start


@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_muon_matches_torch_muon(adjust_lr_fn, nesterov, weight_decay):
    kw = dict(lr=0.02, weight_decay=weight_decay, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    # bf16 Newton–Schulz, as torch's: agreement at bf16 rounding level.
    ref, ours, start = _run_pair({"ns_dtype": torch.bfloat16}, **kw)
    for a, b in zip(ref, ours, strict=True):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-4)
    # fp32 (the path of CPUs without native bf16): a few % of the total movement from torch's bf16.
    ref, ours, start = _run_pair({"ns_dtype": torch.float32}, **kw)
    for a, b, s in zip(ref, ours, start, strict=True):
        moved = (a - s).abs().max()
        assert (a - b).abs().max() < 0.05 * moved


def test_same_shape_batching_equals_one_optimizer_per_matrix():
    # the [40, 24] matrix joins the [24, 40] bucket transposed
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(24, 40, generator=gen) for _ in range(3)] + [torch.randn(40, 24, generator=gen)]
    joint = [p.clone().requires_grad_() for p in start]
    alone = [p.clone().requires_grad_() for p in start]
    opt_joint = Muon(joint, lr=0.05, ns_dtype=torch.float32)
    opts_alone = [Muon([p], lr=0.05, ns_dtype=torch.float32) for p in alone]
    for _ in range(3):
        for a, b in zip(joint, alone, strict=True):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        opt_joint.step()
        for opt in opts_alone:
            opt.step()
    for a, b in zip(joint, alone, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
def test_split_heads_equals_each_head_slice_separately(adjust_lr_fn):
    n_heads, head_dim, d = 4, 8, 32
    gen = torch.Generator().manual_seed(4)
    W = torch.randn(n_heads * head_dim, d, generator=gen).requires_grad_()
    slices = [s.clone().requires_grad_() for s in W.detach().split(head_dim)]
    kw = dict(lr=0.02, adjust_lr_fn=adjust_lr_fn, ns_dtype=torch.float32)
    opt_split = Muon([W], split_heads=n_heads, **kw)
    opt_slices = Muon(slices, **kw)
    for _ in range(3):
        g = torch.randn(W.shape, generator=gen)
        W.grad = g.clone()
        for s, gs in zip(slices, g.split(head_dim), strict=True):
            s.grad = gs.clone()
        opt_split.step()
        opt_slices.step()
    torch.testing.assert_close(W.detach(), torch.cat([s.detach() for s in slices]), rtol=1e-5, atol=1e-6)
    # and it is not the same as orthogonalizing the whole matrix
    per_head = torch.cat([orthogonalize(x, dtype=torch.float32) for x in g.split(head_dim)])
    assert not torch.allclose(orthogonalize(g, dtype=torch.float32), per_head, atol=1e-2)


def test_split_heads_as_param_group_key_and_validation():
    W = torch.zeros(12, 8, requires_grad=True)
    opt = Muon([{"params": [W], "split_heads": 3}], lr=0.1)
    assert opt.param_groups[0]["split_heads"] == 3
    with pytest.raises(ValueError, match="split_heads=5 does not divide the 12 rows"):
        Muon([W], split_heads=5)


def test_muon_rejects_bad_params_and_options():
    with pytest.raises(ValueError, match="2-D matrices.*AdamW"):
        Muon([torch.zeros(4, requires_grad=True)])
    with pytest.raises(ValueError, match="2-D matrices"):
        Muon([torch.zeros(2, 3, 4, requires_grad=True)])
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        Muon([torch.zeros(4, 4, requires_grad=True)], adjust_lr_fn="spectral")
    with pytest.raises(ValueError, match="lr"):
        Muon([torch.zeros(4, 4, requires_grad=True)], lr=-1.0)


def test_momentum_state_is_fp32_for_bf16_params_and_survives_load():
    W = torch.randn(16, 8).bfloat16().requires_grad_()
    opt = Muon([W], lr=0.01)
    W.grad = torch.randn(16, 8).bfloat16()
    opt.step()
    assert W.dtype == torch.bfloat16
    buf = opt.state[W]["momentum_buffer"]
    assert buf.dtype == torch.float32
    W2 = W.detach().clone().requires_grad_()
    opt2 = Muon([W2], lr=0.01)
    opt2.load_state_dict(opt.state_dict())
    loaded = opt2.state[W2]["momentum_buffer"]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, buf) and loaded is not buf


def test_params_without_grad_are_skipped():
    A, B = torch.ones(8, 4, requires_grad=True), torch.ones(8, 4, requires_grad=True)
    opt = Muon([A, B], lr=0.1)
    A.grad = torch.randn(8, 4)
    opt.step()
    assert torch.equal(B, torch.ones(8, 4)) and B not in opt.state
    assert not torch.equal(A, torch.ones(8, 4))


def test_batched_step_equals_the_rule_per_matrix():
    """Muon's step (foreach momentum, same-shape buckets, a tall matrix transposed into its wide twin's
    bucket, per-head blocks) is `muon_update` applied to each matrix on its own. The momentum and the
    Nesterov input are the same elementwise ops, so the buffers are bit-identical; Newton–Schulz is fp32
    here, and a batched or transposed matmul may sum in another order than one matrix's, so the
    parameters agree to fp32 rounding (1e-6 absolute on entries of size ~1), not bit for bit."""
    shapes = [(24, 40), (24, 40), (40, 24), (16, 16), (32, 16), (24, 16)]
    groups = [  # (indices of the shapes, the group's keywords)
        ([0, 1, 2], dict(adjust_lr_fn="match_rms_adamw")),
        ([3], dict(nesterov=False, weight_decay=0.0)),
        ([4], dict(split_heads=4)),  # heads [8, 16]
        ([5], dict(split_heads=3, momentum=0.8)),  # heads [8, 16]: the same bucket as the 4 above
    ]
    defaults = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn=None)
    gen = torch.Generator().manual_seed(5)
    start = [torch.randn(s, generator=gen) for s in shapes]
    batched = [p.clone().requires_grad_() for p in start]
    opt = Muon([{"params": [batched[i] for i in idx], **kw} for idx, kw in groups], **defaults,
               ns_dtype=torch.float32)
    alone = [p.clone() for p in start]
    bufs = [torch.zeros_like(p) for p in start]
    rules = {}  # each matrix's muon_update keywords: Muon's defaults with its group's overrides
    for idx, kw in groups:
        rule = defaults | {k: v for k, v in kw.items() if k != "split_heads"}
        rules.update({i: rule | {"heads": kw.get("split_heads", 1), "ns_dtype": torch.float32} for i in idx})
    for _ in range(3):
        for i, p in enumerate(batched):
            p.grad = torch.randn(p.shape, generator=gen)
            muon_update(alone[i], p.grad.clone(), bufs[i], **rules[i])
        opt.step()
    for p, a, buf in zip(batched, alone, bufs, strict=True):
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)
        torch.testing.assert_close(p.detach(), a, rtol=0, atol=1e-6)
