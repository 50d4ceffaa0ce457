"""The LLaMA-style decoder: shapes, causality, options, parameter names, presets, config errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from model import PRESETS, ModelConfig, Transformer, get_preset, resolve_model_config
from model.transformer import apply_rope, rope_tables

VOCAB = 97


def tiny_cfg(**overrides) -> ModelConfig:
    base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=48)
    return ModelConfig(**{**base, "max_seq_len": 32, **overrides})


def build(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_cfg(**overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_kv_heads": 2},
        {"n_kv_heads": 1, "qk_norm": True},
        {"ffn_type": "gelu"},
        {"ffn_type": "relu2", "tie_embeddings": True},
    ],
)
def test_logits_shape_and_causality(overrides):
    model = build(**overrides).eval()
    idx = torch.randint(0, VOCAB, (3, 20))
    logits = model(idx)
    assert logits.shape == (3, 20, VOCAB)
    assert torch.isfinite(logits).all()
    # Changing token t must leave the logits at positions < t unchanged and change position t.
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % VOCAB
    logits2 = model(changed)
    torch.testing.assert_close(logits2[:, :12], logits[:, :12], rtol=0, atol=1e-6)
    assert (logits2[:, 12] - logits[:, 12]).abs().max() > 1e-4


def test_sequence_longer_than_max_seq_len_is_an_error():
    with pytest.raises(ValueError, match="max_seq_len"):
        build()(torch.zeros(1, 33, dtype=torch.long))


def test_batch_rows_are_independent():
    model = build(n_kv_heads=2).eval()
    idx = torch.randint(0, VOCAB, (4, 16))
    torch.testing.assert_close(model(idx)[1:2], model(idx[1:2]), rtol=1e-5, atol=1e-5)


def reference_attention(attn, x, cos, sin):
    """Explicit-loop GQA attention (each query head reads key/value head h // group) as an oracle."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, H, D)
    k = attn.k_proj(x).view(B, T, Hkv, D)
    v = attn.v_proj(x).view(B, T, Hkv, D)
    if attn.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for h in range(H):
        kv = h // (H // Hkv)
        scores = q[:, :, h] @ k[:, :, kv].transpose(1, 2) / math.sqrt(D)
        heads.append(scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v[:, :, kv])
    return attn.o_proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("n_kv_heads,qk_norm", [(4, False), (2, False), (1, True), (2, True)])
def test_attention_matches_explicit_gqa_reference(n_kv_heads, qk_norm):
    model = build(n_kv_heads=n_kv_heads, qk_norm=qk_norm)
    attn = model.model.layers[0].self_attn
    if qk_norm:  # non-trivial norm gains, so a missing or misplaced norm shows
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 10, 32)
    cos, sin = model.rope_cos[:10], model.rope_sin[:10]
    expected = reference_attention(attn, x, cos, sin)
    torch.testing.assert_close(attn(x, cos, sin), expected, rtol=1e-5, atol=1e-5)


def test_kv_projections_shrink_with_gqa():
    attn = build(n_kv_heads=2).model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (32, 32)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (16, 32)


def test_rope_is_a_rotation_with_relative_phase():
    cos, sin = rope_tables(8, 16, 10000.0)
    x = torch.randn(1, 16, 2, 8)
    rotated = apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated[:, 0], x[:, 0])  # position 0: angle 0
    # <R_m q, R_n k> depends only on m - n.
    q, k = torch.randn(8), torch.randn(8)
    qs = apply_rope(q.expand(1, 16, 1, 8), cos, sin)[0, :, 0]
    ks = apply_rope(k.expand(1, 16, 1, 8), cos, sin)[0, :, 0]
    torch.testing.assert_close(qs[5] @ ks[2], qs[13] @ ks[10], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "ffn_type,act", [("gelu", F.gelu), ("relu2", lambda h: F.relu(h).square())]
)
def test_non_gated_ffn(ffn_type, act):
    mlp = build(ffn_type=ffn_type).model.layers[0].mlp
    assert not hasattr(mlp, "gate_proj")
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(mlp(x), mlp.down_proj(act(mlp.up_proj(x))))


def test_swiglu_ffn():
    mlp = build().model.layers[0].mlp
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(mlp(x), mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)))


def test_untied_parameter_names_follow_llama():
    names = [name for name, _ in build(qk_norm=True).named_parameters()]
    layer = [
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
        "input_layernorm.weight", "post_attention_layernorm.weight",
    ]
    expected = ["model.embed_tokens.weight"]
    expected += [f"model.layers.{i}.{name}" for i in range(2) for name in layer]
    expected += ["model.norm.weight", "lm_head.weight"]
    assert sorted(names) == sorted(expected)
    assert not any(name.endswith(".bias") for name in names)


def test_tied_model_has_no_lm_head_and_shares_the_embedding():
    model = build(tie_embeddings=True)
    names = [name for name, _ in model.named_parameters()]
    assert not any("lm_head" in name for name in names)
    assert not hasattr(model, "lm_head")
    assert "lm_head.weight" not in model.state_dict()
    captured = []
    model.model.norm.register_forward_hook(lambda module, args, out: captured.append(out))
    logits = model(torch.randint(0, VOCAB, (2, 7)))
    # The head is the embedding matrix: logits are (final normed hidden state) @ E^T.
    torch.testing.assert_close(logits, captured[0] @ model.model.embed_tokens.weight.T)
    assert model.num_params() == model.num_params(exclude_embeddings=True)


def test_rope_buffers_are_not_saved():
    keys = build().state_dict().keys()
    assert not any("rope" in key for key in keys)


def test_scaled_init():
    torch.manual_seed(0)
    cfg = tiny_cfg(d_model=256, n_layers=8, n_heads=4, ffn_hidden=512, init_std=0.02)
    model = Transformer(cfg)
    layer = model.model.layers[3]
    out_std = 0.02 / math.sqrt(2 * 8)
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert layer.mlp.up_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert layer.self_attn.o_proj.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert torch.equal(layer.input_layernorm.weight, torch.ones(256))


def test_meta_device_build_then_materialize():
    with torch.device("meta"):
        model = Transformer(tiny_cfg())
    model.to_empty(device="cpu")
    model.reset_parameters()
    reference = build()
    torch.testing.assert_close(model.rope_cos, reference.rope_cos, rtol=0, atol=0)
    torch.testing.assert_close(model.rope_sin, reference.rope_sin, rtol=0, atol=0)
    assert torch.equal(model.model.norm.weight, torch.ones(32))
    assert model.model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.isfinite(model(torch.randint(0, VOCAB, (1, 8)))).all()


def test_same_seed_same_weights():
    a, b = build(), build()
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)


@pytest.mark.filterwarnings("error")  # e.g. a norm that falls off its fused kernel in bf16
def test_autocast_bf16_forward_and_backward():
    model = build(n_kv_heads=2, qk_norm=True)
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), model(idx), rtol=0.1, atol=0.05)
    F.cross_entropy(logits.float().flatten(0, 1), idx.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_training_step_lowers_loss():
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, VOCAB, (4, 17))
    losses = []
    for _ in range(10):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize(
    "name,low,high",
    [("tiny", 1e6, 5e6), ("small", 20e6, 30e6), ("gpt2-160m", 150e6, 170e6), ("0.7b", 0.65e9, 0.9e9)],
)
def test_preset_parameter_counts(name, low, high):
    cfg = PRESETS[name]
    with torch.device("meta"):  # no memory for the big presets
        model = Transformer(cfg)
    assert low <= model.num_params() <= high
    assert hasattr(model, "lm_head")  # every preset is untied, so the `head` group exists


def test_gpt2_160m_is_the_papers_shape():
    cfg = PRESETS["gpt2-160m"]
    shape = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.ffn_hidden, cfg.ffn_type, cfg.tie_embeddings)
    assert shape == (12, 768, 12, 3072, "gelu", False)


def test_get_preset_overrides_and_copies():
    cfg = get_preset("tiny", qk_norm=True, n_kv_heads=2)
    assert cfg.qk_norm and cfg.n_kv_heads == 2
    assert not PRESETS["tiny"].qk_norm  # the preset itself is untouched
    with pytest.raises(ValueError, match="tiny, small, gpt2-160m, 0.7b"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown model field.*d_modle"):
        get_preset("tiny", d_modle=64)
    with pytest.raises(ValueError, match="n_heads"):
        get_preset("tiny", n_heads=3)


def test_resolve_model_config():
    cfg = resolve_model_config({"preset": "small", "d_model": None, "qk_norm": True}, vocab_size=1234)
    assert cfg.vocab_size == 1234 and cfg.qk_norm and cfg.d_model == PRESETS["small"].d_model
    assert resolve_model_config({"preset": "tiny", "vocab_size": 2048}, vocab_size=2000).vocab_size == 2048
    assert resolve_model_config({"preset": "tiny"}).vocab_size == PRESETS["tiny"].vocab_size
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        resolve_model_config({"preset": "tiny", "vocab_size": 100}, vocab_size=4096)
    with pytest.raises(ValueError, match="model.preset is missing"):
        resolve_model_config({"d_model": 64})
    with pytest.raises(ValueError, match="unknown model field.*width"):
        resolve_model_config({"preset": "tiny", "width": 64})


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"d_model": 30}, "not divisible by model.n_heads"),
        ({"n_kv_heads": 3}, "choose n_kv_heads that divides n_heads"),
        ({"ffn_type": "swish"}, "use one of swiglu, gelu, relu2"),
        ({"d_model": 12, "n_heads": 4}, "head dimension .* is odd"),
        ({"n_layers": 0}, "model.n_layers must be a positive integer"),
        ({"vocab_size": 10.5}, "model.vocab_size must be a positive integer"),
        ({"norm_eps": 0}, "model.norm_eps must be a positive number"),
        ({"qk_norm": "yes"}, "model.qk_norm must be true or false"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_cfg(**overrides)


def test_head_dim():
    assert tiny_cfg().head_dim == 8
    assert PRESETS["gpt2-160m"].head_dim == 64
