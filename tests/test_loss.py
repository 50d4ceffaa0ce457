"""The fused head + cross-entropy (model/loss.py) and the model's loss path against the plain one."""

import pytest
import torch
import torch.nn.functional as F

from model import Transformer, get_preset
from model.loss import default_chunk_rows, linear_cross_entropy
from model.transformer import causal_attention


def plain_loss_and_grads(h, weight, targets):
    h, weight = h.detach().requires_grad_(), weight.detach().requires_grad_()
    logits = F.linear(h, weight)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # upcast bf16, keep fp64
    loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten())
    loss.backward()
    return loss, h.grad, weight.grad


def fused_loss_and_grads(h, weight, targets, **kwargs):
    h, weight = h.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = linear_cross_entropy(h, weight, targets, **kwargs)
    loss.backward()
    return loss, h.grad, weight.grad


# chunk sizes below, equal to and above the row count, and one that leaves a ragged last chunk
@pytest.mark.parametrize("chunk_rows", [7, 32, 60, 1000])
def test_matches_cross_entropy_of_the_logits_in_fp64(chunk_rows):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 20, 16, generator=gen, dtype=torch.float64)
    weight = torch.randn(50, 16, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 50, (3, 20), generator=gen)
    ref = plain_loss_and_grads(h, weight, targets)
    out = fused_loss_and_grads(h, weight, targets, chunk_rows=chunk_rows)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[2], ref[2], rtol=1e-10, atol=1e-12)


def test_upstream_gradient_scales_both_gradients():
    gen = torch.Generator().manual_seed(1)
    h, weight = torch.randn(8, 4, generator=gen), torch.randn(10, 4, generator=gen)
    targets = torch.randint(0, 10, (8,), generator=gen)
    _, gh, gw = fused_loss_and_grads(h, weight, targets)
    h2, w2 = h.clone().requires_grad_(), weight.clone().requires_grad_()
    (linear_cross_entropy(h2, w2, targets) * 0.25).backward()
    torch.testing.assert_close(h2.grad, gh * 0.25)
    torch.testing.assert_close(w2.grad, gw * 0.25)


def test_bf16_autocast_matches_the_autocast_plain_path():
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(64, 32, generator=gen)
    weight = torch.randn(100, 32, generator=gen) * 0.1
    targets = torch.randint(0, 100, (64,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = plain_loss_and_grads(h, weight, targets)
        out = fused_loss_and_grads(h, weight, targets, chunk_rows=16)
    assert out[0].dtype == torch.float32 and out[2].dtype == torch.float32  # fp32 loss and master grads
    torch.testing.assert_close(out[0], ref[0], rtol=1e-3, atol=0)
    for got, want in zip(out[1:], ref[1:], strict=True):
        assert ((got - want).norm() / want.norm()).item() < 1e-2


def test_without_autograd_only_the_loss_is_computed():
    gen = torch.Generator().manual_seed(4)
    h, weight = torch.randn(40, 8, generator=gen), torch.randn(30, 8, generator=gen)
    targets = torch.randint(0, 30, (40,), generator=gen)
    want = F.cross_entropy(F.linear(h, weight), targets)
    with torch.no_grad():
        got = linear_cross_entropy(h.requires_grad_(), weight.requires_grad_(), targets, chunk_rows=16)
    assert not got.requires_grad
    torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(linear_cross_entropy(h.detach(), weight.detach(), targets), want.detach(),
                               rtol=1e-6, atol=0)


def test_target_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="targets shape"):
        linear_cross_entropy(torch.randn(2, 5, 8), torch.randn(10, 8), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("tie", [False, True])
def test_model_loss_equals_cross_entropy_of_its_logits(tie):
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny", tie_embeddings=tie, vocab_size=256, n_layers=2))
    idx = torch.randint(0, 256, (2, 33))
    ref = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    for p, want in zip(model.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)


def test_cpu_bf16_attention_is_computed_in_fp32():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=gen).bfloat16() for _ in range(3))
    out = causal_attention(q, k, v, enable_gqa=False)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).bfloat16()
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)


@pytest.mark.slow
def test_compiled_model_loss_is_one_graph_and_matches_eager():
    """train.compile=true compiles the model with its fused loss: no graph break, same loss and grads."""
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny", vocab_size=256, n_layers=1, d_model=64, n_heads=2, n_kv_heads=2,
                                   ffn_hidden=128))
    idx = torch.randint(0, 256, (2, 17))
    eager = model(idx[:, :-1], idx[:, 1:])
    eager.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss = torch.compile(model, fullgraph=True)(idx[:, :-1], idx[:, 1:])
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=0)
    for p, g in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("device", "vocab", "rows"), [("cpu", 4096, 256), ("cpu", 50304, 2048),
                                                        ("cuda", 4096, 4096), ("meta", 128, 256)])
def test_the_default_chunk_follows_the_device_and_the_vocabulary(device, vocab, rows):
    assert default_chunk_rows(torch.device(device), vocab) == rows


def test_the_loss_uses_the_default_chunk_when_none_is_given():
    """Chunking changes how grad_w's sum is rounded: the default path equals the explicit default chunk
    bit for bit (and a large vocabulary on the CPU takes the large-vocabulary chunk)."""
    gen = torch.Generator().manual_seed(0)
    h, weight = torch.randn(4096, 8, generator=gen), torch.randn(20000, 8, generator=gen) * 0.3
    targets = torch.randint(0, 20000, (4096,), generator=gen)

    def grads(chunk_rows):
        hh, ww = h.clone().requires_grad_(), weight.clone().requires_grad_()
        linear_cross_entropy(hh, ww, targets, chunk_rows=chunk_rows).backward()
        return ww.grad

    default = grads(None)
    assert torch.equal(default, grads(2048)) and not torch.equal(default, grads(256))
