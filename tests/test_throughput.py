"""FLOPs per token against a hand count, and the peak-FLOPs table lookups."""

import pytest

from metrics.throughput import PEAK_BF16_FLOPS, flops_per_token, matmul_params, mfu, peak_flops
from model import ModelConfig, Transformer


def test_flops_per_token_hand_count():
    cfg = ModelConfig(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_hidden=384,
                      ffn_type="swiglu", max_seq_len=256)
    # per layer: q,k,v,o 4*128*128 = 65536; SwiGLU 3*128*384 = 147456 -> 212992; x4 layers = 851968
    # lm_head 128*4096 = 524288 -> N = 1376256; 6N = 8257536; attention 12*4*128*256 = 1572864
    assert matmul_params(cfg) == 1_376_256
    assert flops_per_token(cfg, 256) == 9_830_400.0


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96),
        ModelConfig(vocab_size=300, d_model=64, n_layers=3, n_heads=4, n_kv_heads=4, ffn_hidden=256,
                    ffn_type="gelu", tie_embeddings=True),
    ],
)
def test_matmul_params_match_the_model(cfg):
    model = Transformer(cfg)
    # every 2-D weight except the embedding table is a matmul weight; a tied head is counted once more
    n = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in name)
    if cfg.tie_embeddings:
        n += cfg.d_model * cfg.vocab_size
    assert matmul_params(cfg) == n


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835.5e12),
        ("NVIDIA H200", 989.4e12),
        ("NVIDIA GH200 480GB", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362.1e12),
        ("NVIDIA GeForce RTX 4090", 165.2e12),
        ("NVIDIA B200", 2250e12),
        # unknown parts are unknown, never a neighbour's number
        ("NVIDIA A10G", None),
        ("NVIDIA L40", None),
        ("Tesla V100-SXM2-16GB", None),
        ("cpu", None),
        (None, None),
    ],
)
def test_peak_flops_lookup(name, peak, monkeypatch):
    monkeypatch.delenv("MUONLAB_PEAK_FLOPS", raising=False)
    assert peak_flops(name) == peak


def test_peak_override_and_env(monkeypatch):
    monkeypatch.setenv("MUONLAB_PEAK_FLOPS", "1e14")
    assert peak_flops("NVIDIA A10G") == 1e14
    assert peak_flops("NVIDIA H100 80GB HBM3", override=5e14) == 5e14
    monkeypatch.setenv("MUONLAB_PEAK_FLOPS", "fast")
    with pytest.raises(ValueError, match="MUONLAB_PEAK_FLOPS"):
        peak_flops("NVIDIA H100 80GB HBM3")


def test_mfu():
    peak = PEAK_BF16_FLOPS["H100 SXM"]
    # 8 GPUs at 400k tokens/s each on 1e9 FLOPs/token
    assert mfu(8 * 400e3, 1e9, 8, peak) == pytest.approx(400e3 * 1e9 / peak)
    assert mfu(1e5, 1e9, 1, None) is None
    with pytest.raises(ValueError, match="n_devices"):
        mfu(1e5, 1e9, 0, peak)
