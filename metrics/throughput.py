"""Model FLOPs per token and model FLOPs utilization (MFU).

FLOPs per trained token (forward + backward) follow the PaLM paper's accounting (Chowdhery et al. 2022,
appendix B): ``6 * N_matmul + 12 * n_layers * d_model * seq_len``.

* ``N_matmul`` counts every weight that takes part in a matrix multiply: per layer the q, k, v, o
  projections (k/v at ``n_kv_heads * head_dim`` wide) and the FFN (3 matrices for SwiGLU, 2 otherwise),
  plus the ``d_model x vocab`` output projection, counted also when it is tied to the embedding
  (the multiply happens either way). The embedding lookup, norms and activations are not counted.
  Each weight costs 2 FLOPs per token forward and 4 backward, hence the 6.
* ``12 * n_layers * d_model * seq_len`` is attention's QK^T and AV (2 matmuls x 2 FLOPs x 3 for fwd +
  bwd, over n_heads * head_dim = d_model) as if attention were not causal — the common convention
  (PaLM, nanoGPT, torchtitan), so MFU figures compare with theirs.

MFU = tokens/s x FLOPs/token / (n_devices x peak bf16 FLOP/s). Peak numbers are NVIDIA/AMD datasheet
dense (no sparsity) bf16 tensor-core throughput. A device not in the table has no peak, and MFU is then
``None`` (reported as unknown), never a guessed number. ``MUONLAB_PEAK_FLOPS`` (FLOP/s per device) or the
``override`` argument sets the peak by hand.
"""

from __future__ import annotations

import os
import re

from model import ModelConfig

PEAK_FLOPS_ENV = "MUONLAB_PEAK_FLOPS"

# Dense bf16 tensor-core FLOP/s per device, from the vendors' datasheets.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100 SXM": 989.4e12,
    "H100 NVL": 835.5e12,
    "H100 PCIe": 756.0e12,
    "H200 SXM": 989.4e12,
    "H200 NVL": 835.5e12,
    "GH200": 989.4e12,
    "GB200": 2500e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10": 125e12,
    "L40S": 362.1e12,
    "L4": 121e12,
    "RTX 4090": 165.2e12,
    "MI300X": 1307.4e12,
}

# torch.cuda.get_device_name() spellings -> table entry; first match wins, so specific forms come first.
# Word boundaries keep e.g. "A10G" (a different, slower part) from matching "A10".
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"GH200", "GH200"),
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCIe", "H100 PCIe"),
    (r"H100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (r"H200.*NVL", "H200 NVL"),
    (r"H200", "H200 SXM"),
    (r"GB200", "GB200"),
    (r"B200", "B200"),
    (r"A100", "A100"),
    (r"\bA10\b", "A10"),
    (r"L40S", "L40S"),
    (r"\bL4\b", "L4"),
    (r"RTX 4090", "RTX 4090"),
    (r"MI300X", "MI300X"),
)


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in a matrix multiply per token (see the module docstring)."""
    kv_dim = cfg.n_kv_heads * cfg.head_dim
    attn = 2 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * kv_dim
    ffn = (3 if cfg.ffn_type == "swiglu" else 2) * cfg.d_model * cfg.ffn_hidden
    return cfg.n_layers * (attn + ffn) + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6 N_matmul + 12 n_layers d_model seq_len."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    return float(6 * matmul_params(cfg) + 12 * cfg.n_layers * cfg.d_model * seq_len)


def peak_flops(device_name: str | None, override: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of one device named like torch.cuda.get_device_name(); None if unknown.

    ``override`` (or else the environment variable MUONLAB_PEAK_FLOPS) replaces the table.
    """
    if override is None and os.environ.get(PEAK_FLOPS_ENV):
        raw = os.environ[PEAK_FLOPS_ENV]
        try:
            override = float(raw)
        except ValueError:
            raise ValueError(f"{PEAK_FLOPS_ENV}={raw!r} is not a number; set it to the device's peak "
                             "FLOP/s, e.g. 989e12") from None
    if override is not None:
        if override <= 0:
            raise ValueError(f"peak FLOP/s must be positive, got {override}")
        return float(override)
    if not device_name:
        return None
    for pattern, entry in _NAME_PATTERNS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return PEAK_BF16_FLOPS[entry]
    return None


def mfu(tokens_per_s: float, flops_per_token: float, n_devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilization of ``n_devices`` processing ``tokens_per_s`` in total; None if peak unknown."""
    if peak is None:
        return None
    if n_devices < 1:
        raise ValueError(f"n_devices must be at least 1, got {n_devices}")
    return tokens_per_s * flops_per_token / (n_devices * peak)
