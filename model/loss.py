"""Fused output projection + cross-entropy: the training loss without materializing the logits.

The usual loss path, `F.cross_entropy(lm_head(h).float(), targets)`, keeps the [N, vocab] logits, an
fp32 copy of them and the log-softmax output alive until backward (about 3 x 4 bytes x N x vocab:
~10 GB at GPT-2's vocabulary and 64k tokens per micro-batch), and walks them again in backward.
Because the loss is a scalar, its gradients can be computed during the forward pass instead: for
one chunk of rows at a time, logits -> softmax -> (softmax - onehot) -> the chunk's gradients with
respect to the hidden states and to the head weight. Backward then only scales the two stored
gradients by the incoming gradient. Peak extra memory is one chunk of logits, and the softmax and
its gradient are one in-place pass over a chunk that is still in cache.

Measured on the project's 2-core AVX-512 CPU (benchmarks/README.md): the head + loss of the `tiny`
preset (1024 rows, vocab 4096) in bf16 takes 10 ms instead of 22 ms; in fp32 it is on par.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.precision import autocast_dtype, autocast_off

# Rows per chunk. Each chunk costs one read-modify-write of the fp32 head gradient (vocab x d: 154 MB at
# 50304 x 768) against 6 x rows x vocab x d FLOPs of matmuls, so larger chunks amortize it, while a chunk
# whose logits stay in cache between the softmax and the two matmuls that read them is faster still.
# - CPU, measured (benchmarks/README.md, bench_loss on a 2-core Xeon, fp32): at vocabulary 4096,
#   128-1024 rows are within 5% of each other (256 x 4096 fp32 logits = 4 MiB stay in L2/L3); at 50304 no
#   chunk fits in cache and larger ones win (2048 rows: 0.73x the time of 256). So 256 rows up to a
#   vocabulary of 16384 (a 16 MiB chunk), 2048 above.
# - CUDA (reasoned, then measured by the GPU check's loss_chunks part): at 256 rows an H100/H200 spends
#   about as long on the 2 x 154 MB of grad_w traffic (~0.07 ms at ~4 TB/s) as on the chunk's matmuls
#   (~0.09 ms at ~700 TFLOP/s), ~20% of a gpt2-160m step; at 4096 rows the traffic is ~5% of the matmuls
#   while one chunk of fp32 logits is 0.8 GB, small beside an 80-141 GB GPU.
CPU_CACHED_VOCAB = 16384
CHUNK_ROWS = {"cpu": 256, "cpu_large_vocab": 2048, "cuda": 4096}


def default_chunk_rows(device: torch.device, vocab: int) -> int:
    """The chunk size for `device` and a head of `vocab` rows (any non-CUDA device is treated as a CPU)."""
    if device.type == "cuda":
        return CHUNK_ROWS["cuda"]
    return CHUNK_ROWS["cpu"] if vocab <= CPU_CACHED_VOCAB else CHUNK_ROWS["cpu_large_vocab"]


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ W^T, t_i), one chunk of rows at a time, with the gradients computed in forward
    when `with_grads` (without, e.g. under no_grad, only the loss: one matmul per chunk, not three)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk_rows: int, with_grads: bool
    ) -> Tensor:
        rows = h.shape[0]
        w = weight.to(h.dtype)  # the compute dtype (bf16 under autocast); one cast for all chunks
        if with_grads:
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros_like(weight)  # accumulated in the parameter's dtype (fp32 master weights)
        loss_dtype = torch.promote_types(h.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        total = torch.zeros((), dtype=loss_dtype, device=h.device)
        for start in range(0, rows, chunk_rows):
            h_c, t_c = h[start : start + chunk_rows], targets[start : start + chunk_rows, None]
            logits = (h_c @ w.t()).to(loss_dtype)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += lse.sum() - logits.gather(1, t_c).sum()
            if not with_grads:
                continue
            # d loss_i / d logits_i = softmax_i - onehot(t_i), computed in place over the chunk.
            probs = logits.sub_(lse).exp_()
            probs.scatter_add_(1, t_c, torch.full_like(lse, -1.0))
            g = probs.to(h.dtype)
            grad_h[start : start + chunk_rows] = g @ w
            grad_w += g.t() @ h_c
        if with_grads:
            ctx.save_for_backward(grad_h, grad_w)
        ctx.rows = rows
        return total / rows

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.rows
        return grad_h * scale.to(grad_h.dtype), grad_w * scale.to(grad_w.dtype), None, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Mean cross-entropy of the logits `h @ weight.T` against `targets`, in fp32, logits never stored.

    h: [..., d] hidden states (cast to the autocast dtype when autocast is on, as nn.Linear would);
    weight: [vocab, d]; targets: [...] class indices (every one counted; no ignore index);
    chunk_rows: rows per chunk (default: `default_chunk_rows` of h's device and the vocabulary).
    Equals `F.cross_entropy(F.linear(h, weight).float().flatten(0, -2), targets.flatten())`.
    """
    if targets.shape != h.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match hidden states "
                         f"{tuple(h.shape)}")
    dtype = autocast_dtype(h.device.type) or h.dtype
    with_grads = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    # Autocast off inside: the function casts by itself and must keep the softmax in fp32.
    with autocast_off(h.device.type):
        return _LinearCrossEntropy.apply(h.to(dtype).flatten(0, -2), weight, targets.flatten(),
                                         chunk_rows or default_chunk_rows(h.device, weight.shape[0]),
                                         with_grads)
