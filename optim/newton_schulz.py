"""The iterations that Muon uses to orthogonalize its updates: quintic Newton–Schulz (one polynomial, or
one per step as Polar Express) and the exact polar factor from an SVD."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

DEFAULT_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
Triple = tuple[float, float, float]
# One (a, b, c) for every step, or one per step (the last repeated when there are more steps).
Coefficients = Triple | tuple[Triple, ...]
METHODS = ("newton_schulz", "exact")


def _polar_express() -> tuple[Triple, ...]:
    """Polar Express's degree-5 coefficients (Amsel et al., arXiv 2505.16932, Algorithm 1).

    Algorithm 1 divides all but the last polynomial by the safety factor 1.01 (a / 1.01, b / 1.01^3,
    c / 1.01^5) and scales the input by 1 / (1.01 ||G||_F); `orthogonalize` scales by 1 / ||G||_F, so the
    second 1.01 is folded into the first polynomial the same way (p(x / s) = a/s x + b/s^3 x^3 + c/s^5 x^5).
    """
    published = [
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
        (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
        (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
        (1.875, -1.25, 0.375),  # the fixed point the later steps repeat
    ]

    def safe(abc: Triple, s: float) -> Triple:
        a, b, c = abc
        return (a / s, b / s**3, c / s**5)

    steps = [safe(abc, 1.01) for abc in published[:-1]] + [published[-1]]
    return (safe(steps[0], 1.01), *steps[1:])


POLAR_EXPRESS_COEFFICIENTS = _polar_express()
# optim.ns_coefficients -> Muon's ns_coefficients
NS_COEFFICIENTS: dict[str, Coefficients] = {
    "quintic": DEFAULT_COEFFICIENTS,
    "polar_express": POLAR_EXPRESS_COEFFICIENTS,
}


def as_coefficients(coefficients: Sequence[float] | Sequence[Sequence[float]]) -> Coefficients:
    """`coefficients` as a hashable (a, b, c) or tuple of per-step triples; an error if it is neither."""
    per_step = isinstance(coefficients[0], Sequence) if len(coefficients) else False
    triples = [tuple(float(x) for x in abc) for abc in coefficients] if per_step else [
        tuple(float(x) for x in coefficients)]
    if not len(coefficients) or any(len(abc) != 3 for abc in triples):
        raise ValueError(f"coefficients must be 3 numbers (a, b, c) or a list of such triples, "
                         f"got {coefficients!r}")
    return tuple(triples) if per_step else triples[0]


def _schedule(coefficients: Coefficients, steps: int) -> list[Triple]:
    """The (a, b, c) of each of `steps` steps (per-step coefficients: the last one repeated)."""
    per_step = coefficients if isinstance(coefficients[0], tuple) else (coefficients,)
    return [per_step[min(i, len(per_step) - 1)] for i in range(steps)]


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
    coefficients: Coefficients = DEFAULT_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
    method: str = "newton_schulz",
) -> Tensor:
    """Quintic Newton–Schulz iteration on the last two dims of `G` ([..., m, n], batched over the rest).

    It returns approximately U S' V^T where G = U S V^T, with the singular values S' roughly in
    [0.5, 1.5] — NOT exactly the polar factor U V^T. The coefficients maximize the slope at zero so
    that 5 steps suffice; the iteration deliberately does not converge to 1 (Keller Jordan's Muon),
    which does not hurt training. G is first scaled by its Frobenius norm (floored at `eps`) so that
    its spectral norm is at most 1. The result has dtype `dtype` (default `default_ns_dtype`: bf16
    on CUDA and on CPUs with native bf16 matmul, fp32 otherwise); `G` itself is never modified.

    `coefficients` may also give one (a, b, c) per step (`POLAR_EXPRESS_COEFFICIENTS`, which do converge
    to the polar factor). `method="exact"` returns the polar factor itself (`polar_factor`; steps and
    coefficients unused).
    """
    if G.ndim < 2:
        raise ValueError(f"orthogonalize needs a [..., m, n] tensor, got shape {tuple(G.shape)}")
    if not 0 <= steps < 100:
        raise ValueError(f"steps must be in [0, 100), got {steps}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    schedule = _schedule(as_coefficients(coefficients), steps)
    if method == "exact":
        return polar_factor(G).to(dtype or default_ns_dtype(G.device))
    X = G.to(dtype or default_ns_dtype(G.device))
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    batch_shape, (m, n) = X.shape[:-2], X.shape[-2:]
    X = X.reshape(-1, m, n)
    if X.device.type == "cpu" and m * n >= CPU_BATCHED_MAX_NUMEL:
        # One by one, on the wide orientation: a 2-D matmul takes a transposed view as it is. A tall
        # result is returned as a transposed view too (copying it into place would be a strided copy).
        tall = m > n
        wide = torch.stack([_iterate(x, schedule) for x in (X.mT if tall else X)])
        X = wide.mT if tall else wide
    else:
        X = _iterate(X, schedule)
    return X.reshape(*batch_shape, m, n)


def polar_factor(G: Tensor) -> Tensor:
    """The polar factor U V^T of `G` ([..., m, n]) from an fp32 SVD: the theory's idealized Muon.

    Singular values at rounding level count as zero (U V^T is not unique there; Newton–Schulz also maps
    them to 0), so a zero or rank-deficient input gives zeros in those directions, not noise.
    """
    U, S, Vh = torch.linalg.svd(G.float(), full_matrices=False)
    tol = S.amax(dim=-1, keepdim=True) * max(G.shape[-2:]) * torch.finfo(torch.float32).eps
    return (U * (tol < S).to(U.dtype).unsqueeze(-2)) @ Vh


# On CPU, torch's batched matmul beats a loop of 2-D matmuls only for small matrices: measured 2x
# faster at 16 x 128x128, but 15-25% slower from 256x256 up (bf16 on an AVX512-BF16 EPYC).
CPU_BATCHED_MAX_NUMEL = 256 * 256


def _iterate(X: Tensor, schedule: Sequence[Triple]) -> Tensor:
    """The Newton–Schulz steps (one (a, b, c) each) on a normalized wide [m, n] (m <= n) or any [N, m, n] X.

    The Gram matrix is taken on the smaller side. A batched tall X would be copied if transposed, so
    its transposed iteration is written without transposes (X <- aX + X B with B from X^T X).
    """
    if X.ndim == 2:
        for a, b, c in schedule:
            A = X @ X.T
            X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
        return X
    tall = X.size(-2) > X.size(-1)
    for a, b, c in schedule:
        A = X.mT @ X if tall else X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, X, B, beta=a) if tall else torch.baddbmm(X, B, X, beta=a)
    return X


class NSConfig(NamedTuple):
    """The keywords of `orthogonalize`, dtype resolved; matrices are batched together only if equal."""

    steps: int
    coefficients: Coefficients
    eps: float
    dtype: torch.dtype
    method: str = "newton_schulz"


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
