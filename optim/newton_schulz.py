"""The quintic Newton–Schulz iteration that Muon uses to orthogonalize its updates."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

DEFAULT_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), through oneDNN.

    Measured on a 2-core Zen 4 (AVX512-BF16): bf16 matmul ~4x faster than fp32. Without those
    instructions bf16 is emulated: ~2x slower than fp32 with AVX-512, ~100x slower with AVX2 only.
    ONEDNN_MAX_CPU_ISA (oneDNN's own switch) can forbid the bf16 instructions; it is respected.
    """
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    if not (capabilities.get("avx512_bf16") or capabilities.get("amx_bf16")):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return isa in ("ALL", "DEFAULT") or any(tag in isa for tag in ("BF16", "AMX", "AVX10"))


def default_ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA and on CPUs with native bf16 matmul; fp32 elsewhere (where bf16 is emulated, slow)."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return torch.float32


def orthogonalize(
    G: Tensor,
    steps: int = 5,
    coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Quintic Newton–Schulz iteration on the last two dims of `G` ([..., m, n], batched over the rest).

    It returns approximately U S' V^T where G = U S V^T, with the singular values S' roughly in
    [0.5, 1.5] — NOT exactly the polar factor U V^T. The coefficients maximize the slope at zero so
    that 5 steps suffice; the iteration deliberately does not converge to 1 (Keller Jordan's Muon),
    which does not hurt training. G is first scaled by its Frobenius norm (floored at `eps`) so that
    its spectral norm is at most 1. The result has dtype `dtype` (default `default_ns_dtype`: bf16
    on CUDA and on CPUs with native bf16 matmul, fp32 otherwise); `G` itself is never modified.
    """
    if G.ndim < 2:
        raise ValueError(f"orthogonalize needs a [..., m, n] tensor, got shape {tuple(G.shape)}")
    if len(coefficients) != 3:
        raise ValueError(f"coefficients must be 3 numbers (a, b, c), got {coefficients!r}")
    if not 0 <= steps < 100:
        raise ValueError(f"steps must be in [0, 100), got {steps}")
    X = G.to(dtype or default_ns_dtype(G.device))
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    batch_shape, (m, n) = X.shape[:-2], X.shape[-2:]
    X = X.reshape(-1, m, n)
    if X.device.type == "cpu" and m * n >= CPU_BATCHED_MAX_NUMEL:
        # One by one, on the wide orientation: a 2-D matmul takes a transposed view as it is. A tall
        # result is returned as a transposed view too (copying it into place would be a strided copy).
        tall = m > n
        wide = torch.stack([_iterate(x, steps, coefficients) for x in (X.mT if tall else X)])
        X = wide.mT if tall else wide
    else:
        X = _iterate(X, steps, coefficients)
    return X.reshape(*batch_shape, m, n)


# On CPU, torch's batched matmul beats a loop of 2-D matmuls only for small matrices: measured 2x
# faster at 16 x 128x128, but 15-25% slower from 256x256 up (bf16 on an AVX512-BF16 EPYC).
CPU_BATCHED_MAX_NUMEL = 256 * 256


def _iterate(X: Tensor, steps: int, coefficients: Sequence[float]) -> Tensor:
    """The Newton–Schulz steps on a normalized wide [m, n] (m <= n) or any [N, m, n] X.

    The Gram matrix is taken on the smaller side. A batched tall X would be copied if transposed, so
    its transposed iteration is written without transposes (X <- aX + X B with B from X^T X).
    """
    a, b, c = coefficients
    if X.ndim == 2:
        for _ in range(steps):
            A = X @ X.T
            X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
        return X
    tall = X.size(-2) > X.size(-1)
    for _ in range(steps):
        A = X.mT @ X if tall else X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, X, B, beta=a) if tall else torch.baddbmm(X, B, X, beta=a)
    return X


class NSConfig(NamedTuple):
    """The keywords of `orthogonalize`, dtype resolved; matrices are batched together only if equal."""

    steps: int
    coefficients: tuple[float, float, float]
    eps: float
    dtype: torch.dtype


class BucketKey(NamedTuple):
    """Blocks with equal keys are stacked into one [N, rows, cols] bucket and orthogonalized by one call."""

    rows: int
    cols: int
    device: torch.device
    ns: NSConfig


# Orthogonalizes buckets of stacked blocks: {key: [N, rows, cols]} -> {key: result} (local or across ranks).
BucketFn = Callable[[dict[BucketKey, Tensor]], dict[BucketKey, Tensor]]


def orthogonalize_buckets(buckets: dict[BucketKey, Tensor]) -> dict[BucketKey, Tensor]:
    """Orthogonalize every bucket locally, one batched call each."""
    return {key: orthogonalize(stack, **key.ns._asdict()) for key, stack in buckets.items()}
