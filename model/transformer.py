"""A LLaMA-style decoder whose module names match transformers' Llama, so weights convert 1:1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.loss import linear_cross_entropy
from model.precision import to_autocast_dtype


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias), as LlamaRMSNorm."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast, q/k reach q_norm/k_norm in bf16: match the gain's dtype so the fused kernel runs.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables [max_seq_len, head_dim] (fp32): (cos, cos) and (-sin, sin) over the two halves."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1).float(), torch.cat((-sin, sin), dim=-1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, heads, head_dim] by the tables of rope_tables sliced to [T, head_dim].

    Same convention as transformers' rotate_half: dimension j pairs with j + head_dim/2, so
    Llama checkpoints need no permutation of q_proj/k_proj rows. The sign lives in the sin
    table, so the rotation is x*cos + swap_halves(x)*sin: three kernels.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos[:, None], torch.cat((x2, x1), dim=-1), sin[:, None])


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> torch.Tensor:
    """Causal SDPA over [B, heads, T, head_dim], in fp32 on CPU whatever the input dtype.

    torch's CPU flash attention is slower in bf16 than in fp32 on the CPUs measured (AVX-512 BF16,
    no AMX): 3x at T=128, 2x at T=1024, forward + backward; upcasting costs less than it saves.
    """
    if q.device.type != "cpu" or q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    dtype = q.dtype
    with torch.autocast("cpu", enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    return y.to(dtype)


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads and optional per-head QK-norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        if cfg.qk_norm:
            # RMSNorm over each head's vector, before RoPE (Qwen3's q_norm/k_norm).
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """Gated SwiGLU FFN (gate_proj, up_proj, down_proj) or non-gated GELU / ReLU^2 (up_proj, down_proj)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ffn_type = cfg.ffn_type
        if cfg.ffn_type == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ffn_type == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.ffn_type == "gelu":
            h = F.gelu(self.up_proj(x))
        else:
            h = F.relu(self.up_proj(x)).square()
        return self.down_proj(h)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(to_autocast_dtype(self.input_layernorm(x)), cos, sin)
        return x + self.mlp(to_autocast_dtype(self.post_attention_layernorm(x)))


class Backbone(nn.Module):
    """Embedding, decoder layers and final norm: the `model.` prefix of Llama's parameter names."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class Transformer(nn.Module):
    """LLaMA-style causal LM: forward(idx [B, T]) -> logits [B, T, vocab_size];
    forward(idx, targets [B, T]) -> the mean cross-entropy (fp32), without materializing the logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        if not config.tie_embeddings:
            # Registered only when untied, so a tied model's parameter names carry no lm_head.
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        table_shape = (config.max_seq_len, config.head_dim)
        self.register_buffer("rope_cos", torch.empty(table_shape), persistent=False)
        self.register_buffer("rope_sin", torch.empty(table_shape), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, residual outputs (o_proj, down_proj) scaled by 1/sqrt(2 n_layers),
        unit norm gains, and the RoPE tables: all of the model's state, so a model built on the meta
        device is ready after `to_empty(device=...)` and this call."""
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                is_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_out else std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = idx.shape[1]
        if seq_len > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds model.max_seq_len={self.config.max_seq_len}; "
                f"set model.max_seq_len >= {seq_len} or shorten the sequences"
            )
        # Cast once per forward (not per layer) so RoPE runs in the autocast compute dtype.
        cos = to_autocast_dtype(self.rope_cos[:seq_len])
        sin = to_autocast_dtype(self.rope_sin[:seq_len])
        x = self.model.embed_tokens(idx)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        head = self.model.embed_tokens if self.config.tie_embeddings else self.lm_head
        if targets is not None:
            return linear_cross_entropy(x, head.weight, targets)
        # Call lm_head as a module (not F.linear on its weight) so module hooks, e.g. FSDP's, run.
        return F.linear(x, head.weight) if self.config.tie_embeddings else self.lm_head(x)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters; exclude_embeddings drops the input embedding table
        (kept when tied, since it is then the output head too)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and not self.config.tie_embeddings:
            total -= self.model.embed_tokens.weight.numel()
        return total
