"""GPU-only checks of the fast path: bf16 autocast, torch.compile, flash attention, bf16 Newton–Schulz.

Every test here needs CUDA and is skipped cleanly without it (the CPU suite collects and skips them).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, Transformer
from model.loss import linear_cross_entropy
from optim.muon import orthogonalize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Small, but with head_dim 64 (flash attention's sweet spot) and more than one layer.
CFG = ModelConfig(
    vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=512, max_seq_len=128
)


Step = tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]


def _model_and_batch() -> tuple[Transformer, torch.Tensor]:
    torch.manual_seed(0)
    model = Transformer(CFG).cuda()
    batch = torch.randint(0, CFG.vocab_size, (4, 129), device="cuda")
    return model, batch


def _loss_and_grads(model: torch.nn.Module, batch: torch.Tensor, bf16: bool) -> Step:
    """(logits, loss, grads) of one forward/backward, in fp32 or under bf16 autocast."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        logits = model(batch[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    return logits.float().detach(), loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_bf16_autocast_forward_backward_close_to_fp32() -> None:
    model, batch = _model_and_batch()
    logits32, loss32, grads32 = _loss_and_grads(model, batch, bf16=False)
    logits16, loss16, grads16 = _loss_and_grads(model, batch, bf16=True)
    assert torch.isfinite(logits16).all() and torch.isfinite(loss16)
    assert all(torch.isfinite(g).all() for g in grads16)
    assert abs(loss16.item() - loss32.item()) < 1e-2 * loss32.item()
    assert _cosine(logits16, logits32) > 0.999
    for (name, _), g16, g32 in zip(model.named_parameters(), grads16, grads32, strict=True):
        assert _cosine(g16, g32) > 0.99, name


def test_compiled_model_matches_eager() -> None:
    model, batch = _model_and_batch()
    logits_eager, loss_eager, grads_eager = _loss_and_grads(model, batch, bf16=False)
    compiled = torch.compile(model)
    logits_c, loss_c, grads_c = _loss_and_grads(compiled, batch, bf16=False)
    torch.testing.assert_close(logits_c, logits_eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_c, loss_eager, rtol=1e-5, atol=1e-5)
    # Fused kernels sum in another order: equal up to fp32 rounding, not bit for bit.
    for (name, _), g_c, g_e in zip(model.named_parameters(), grads_c, grads_eager, strict=True):
        assert _rel_err(g_c, g_e) < 1e-4, name


def test_flash_attention_backend_runs_the_model_in_bf16() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, batch = _model_and_batch()
    # Restricted to flash, SDPA raises "No available kernel" if the model's q/k/v do not qualify
    # (dtype, layout, head_dim), so running at all proves the flash path is taken.
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        logits_flash, loss_flash, grads_flash = _loss_and_grads(model, batch, bf16=True)
    with sdpa_kernel(SDPBackend.MATH):
        logits_math, _, grads_math = _loss_and_grads(model, batch, bf16=True)
    assert torch.isfinite(loss_flash)
    assert _cosine(logits_flash, logits_math) > 0.999
    for g_f, g_m in zip(grads_flash, grads_math, strict=True):
        assert _cosine(g_f, g_m) > 0.99


def test_orthogonalize_bf16_on_cuda_close_to_fp32() -> None:
    torch.manual_seed(0)
    G = torch.randn(3, 256, 768, device="cuda")
    X16 = orthogonalize(G)  # CUDA default: bf16
    X32 = orthogonalize(G, dtype=torch.float32)
    assert X16.dtype == torch.bfloat16
    rel = (X16.float() - X32).norm() / X32.norm()
    assert rel < 3e-2, rel  # bf16 keeps ~3 significant digits; measured ~1.2e-2
    # Both are near-orthogonal: singular values within Newton–Schulz's band around 1.
    s = torch.linalg.svdvals(X16.float())
    assert s.min() > 0.5 and s.max() < 1.5


def test_fused_loss_on_cuda_matches_logits_path_and_saves_memory() -> None:
    model, batch = _model_and_batch()
    _, loss_ref, grads_ref = _loss_and_grads(model, batch, bf16=True)
    compiled = torch.compile(model)
    model.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(batch[:, :-1], batch[:, 1:])
    loss.backward()
    assert abs(loss.item() - loss_ref.item()) < 1e-2 * loss_ref.item()
    for (name, p), g_ref in zip(model.named_parameters(), grads_ref, strict=True):
        assert _cosine(p.grad, g_ref) > 0.99, name
    # A large vocabulary: the fused loss never holds [tokens, vocab] logits, so it peaks lower.
    head = torch.randn(32768, 256, device="cuda", requires_grad=True)
    h = torch.randn(8192, 256, device="cuda", requires_grad=True)
    targets = torch.randint(0, 32768, (8192,), device="cuda")
    peaks = []
    for fused in (True, False):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = (linear_cross_entropy(h, head, targets) if fused
                   else F.cross_entropy(F.linear(h, head).float(), targets))
        out.backward()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        head.grad = h.grad = None
    assert peaks[0] < 0.5 * peaks[1], peaks  # plain: ~3 x 8192 x 32768 x 4 B of logits alive
