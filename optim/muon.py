"""Muon: momentum SGD whose update is orthogonalized by a Newton–Schulz iteration.

`muon_update` is the rule for one matrix, written with the pieces (`update_momentum`, `momentum_input`,
`orthogonalize`, `adjusted_lr`, `apply_update`) that `Muon.step` calls on many matrices at once.

`Muon` takes the same constructor keywords as `torch.optim.Muon` (torch 2.13) and applies the same
update, so it is a drop-in replacement, but faster: same-shape matrices are stacked into one bucket
and orthogonalized by one call (batched, except large matrices on CPU, where a loop of 2-D matmuls is
faster), the iteration runs in bf16 where matmul is native in bf16 (CUDA, CPUs with AVX512-BF16 or
AMX) and in fp32 on other CPUs (where bf16 is emulated, slow), and across ranks each matrix is
orthogonalized once: under DDP each rank orthogonalizes its share of the matrices, under FSDP2 each
matrix's owner rank receives its rows from the others and sends back theirs of the result
(`optim.dist_muon`). `orthogonalize` (the Newton–Schulz step, `optim.newton_schulz`) is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from optim.dist_muon import (
    LocalMatrix,
    RowShard,
    check_row_sharded,
    distributed_bucket_fn,
    local_matrix,
    row_sharded_orthogonalize,
)
from optim.newton_schulz import (
    DEFAULT_COEFFICIENTS,
    BucketKey,
    NSConfig,
    default_ns_dtype,
    orthogonalize,
    orthogonalize_buckets,
)

__all__ = ["DEFAULT_COEFFICIENTS", "Muon", "adjusted_lr", "muon_update", "orthogonalize"]

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


# -- the rule, per matrix: `muon_update`, built from the pieces that `Muon`'s batched step calls too --


def muon_update(
    param: Tensor,
    grad: Tensor,
    buf: Tensor,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    ns_dtype: torch.dtype | None = None,
    heads: int = 1,
) -> None:
    """One Muon step on one [heads * rows, cols] matrix, in place on `param` and its fp32 momentum `buf`.

    The reference that `Muon` batches (its step gives the same result up to matmul rounding). The
    matrix is orthogonalized as `heads` [rows, cols] blocks; the keywords are `Muon`'s.
    """
    grad = grad.float()
    update_momentum([buf], [grad], momentum)
    rows, cols = param.shape[0] // heads, param.shape[1]
    blocks = momentum_input(grad, buf, momentum, nesterov).view(heads, rows, cols)
    update = orthogonalize(blocks, steps=ns_steps, coefficients=ns_coefficients, eps=eps, dtype=ns_dtype)
    scale = adjusted_lr(lr, adjust_lr_fn, rows, cols)
    apply_update(param.view(heads, rows, cols), update, lr, weight_decay, scale)


def update_momentum(bufs: list[Tensor], grads: list[Tensor], momentum: float) -> None:
    """buf <- lerp(buf, grad, 1 - momentum) for every pair, in one foreach call."""
    torch._foreach_lerp_(bufs, grads, 1 - momentum)


def momentum_input(
    grad: Tensor, buf: Tensor, momentum: float, nesterov: bool, out: Tensor | None = None
) -> Tensor:
    """What is orthogonalized: lerp(grad, buf, momentum) with Nesterov, else buf (into `out` if given)."""
    if nesterov:
        return torch.lerp(grad, buf, momentum, out=out)
    return buf if out is None else out.copy_(buf)


def adjusted_lr(lr: float, adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """Learning rate scaled for a [rows, cols] update, as torch.optim.Muon does.

    "original" (also None): sqrt(max(1, rows/cols)) (Keller Jordan); "match_rms_adamw":
    0.2 * sqrt(max(rows, cols)), which gives the update the RMS of an AdamW update (Moonlight).
    """
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}")


def apply_update(param: Tensor, update: Tensor, lr: float, weight_decay: float, scale: float) -> None:
    """param <- param * (1 - lr * weight_decay) - scale * update (decoupled weight decay, plain lr)."""
    param.mul_(1 - lr * weight_decay)
    param.add_(update, alpha=-scale)


# -- the batched engine ----------------------------------------------------------------------------


@dataclass
class _Work:
    """One matrix's step on this rank: its plain tensors and its param group's settings.

    The matrix is `heads` (1 unless split per head) blocks of [rows, cols]. `tall`, `key` and `blocks`
    serve the buckets of whole matrices (row-sharded ones are stacked by their owner rank instead).
    """

    matrix: LocalMatrix
    heads: int
    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    adjust_lr_fn: str | None
    ns: NSConfig

    @property
    def rows(self) -> int:
        return self.matrix.rows // self.heads

    @property
    def cols(self) -> int:
        return self.matrix.param.shape[1]

    @property
    def scale(self) -> float:
        return adjusted_lr(self.lr, self.adjust_lr_fn, self.rows, self.cols)

    @property
    def tall(self) -> bool:
        """A tall block is bucketed transposed: [d, 4d] and [4d, d] matrices share one batched call."""
        return self.rows > self.cols

    @property
    def key(self) -> BucketKey:
        """The bucket of a whole matrix's blocks (see `blocks`)."""
        rows, cols = (self.cols, self.rows) if self.tall else (self.rows, self.cols)
        return BucketKey(rows, cols, self.matrix.param.device, self.ns)

    def blocks(self, t: Tensor) -> Tensor:
        """A whole matrix's `t` ([heads * rows, cols]) as [heads, rows, cols], transposed if tall."""
        blocks = t.view(self.heads, self.rows, self.cols)
        return blocks.mT if self.tall else blocks


class Muon(torch.optim.Optimizer):
    """Muon with the constructor keywords and update rule of `torch.optim.Muon`.

    Each step applies `muon_update` to every matrix with a gradient (momentum in fp32 state), batched:
    one foreach call per group for the momentum, one Newton–Schulz call per bucket of same-shape blocks.
    Extra keywords beyond torch's:

    - `ns_dtype`: dtype of the Newton–Schulz iteration (default `optim.newton_schulz.default_ns_dtype`:
      bf16 on CUDA and on CPUs with native bf16 matmul, fp32 on other CPUs).
    - `split_heads` (also a per-param-group key): orthogonalize a [n_heads * head_dim, d] matrix
      per attention head, i.e. each [head_dim, d] row block separately; the lr adjustment then uses
      the block's shape.
    - `distributed`: share the Newton–Schulz work of plain (replicated) matrices across DDP ranks
      (None: automatically when torch.distributed is initialized with world_size > 1; False: every
      rank does all of it). DTensor matrices (FSDP2 shards) are always orthogonalized by their owner.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: torch.dtype | None = None,
        split_heads: int | None = None,
        distributed: bool | None = None,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Muon: lr must be >= 0, got {lr}")
        if not momentum >= 0.0:
            raise ValueError(f"Muon: momentum must be >= 0, got {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Muon: weight_decay must be >= 0, got {weight_decay}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"Muon: adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}")
        if not 0 <= ns_steps < 100:
            raise ValueError(f"Muon: ns_steps must be in [0, 100), got {ns_steps}")
        if len(ns_coefficients) != 3:
            raise ValueError(f"Muon: ns_coefficients must be 3 numbers (a, b, c), got {ns_coefficients!r}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            split_heads=split_heads,
        )
        self.ns_dtype = ns_dtype
        self.distributed = distributed
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking that every parameter is a matrix that splits into its heads."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        heads = group["split_heads"]
        for p in group["params"]:
            check_row_sharded(p)
            if p.ndim != 2:
                raise ValueError(
                    f"Muon only optimizes 2-D matrices, got a parameter of shape {tuple(p.shape)}; "
                    "route 1-D parameters (norm gains, biases) and others to AdamW"
                )
            if heads is not None and (heads < 1 or p.shape[0] % heads):
                raise ValueError(
                    f"Muon: split_heads={heads} does not divide the {p.shape[0]} rows of a parameter of "
                    f"shape {tuple(p.shape)}; set split_heads to the number of heads of that projection"
                )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step: `muon_update` on every matrix with a gradient, batched."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._update_momenta()  # 1. momentum, on this rank's tensors
        # 2. the Nesterov inputs orthogonalized: whole matrices in buckets (each rank its share under DDP,
        # then all_gather), row-sharded ones by their owner rank (all_to_all there and back)
        replicated = [w for w in work if w.matrix.mesh is None]
        row_sharded = [w for w in work if w.matrix.mesh is not None]
        updates = self._replicated_updates(replicated) + self._row_sharded_updates(row_sharded)
        for w, update in updates:  # 3. weight decay and the update, on this rank's tensors
            # `update`: the matrix's [heads, rows, cols] blocks, or this rank's rows of a row-sharded one
            apply_update(w.matrix.param.view_as(update), update, w.lr, w.weight_decay, w.scale)
        return loss

    def _update_momenta(self) -> list[_Work]:
        """Update the momentum of every matrix with a gradient (one foreach call per group); return them."""
        work: list[_Work] = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
            matrices = [local_matrix(p, self.state[p]["momentum_buffer"]) for p in params]
            update_momentum([m.buf for m in matrices], [m.grad for m in matrices], group["momentum"])
            steps, coefficients, eps = group["ns_steps"], tuple(group["ns_coefficients"]), group["eps"]
            work += [
                _Work(
                    matrix=m,
                    heads=group["split_heads"] or 1,
                    lr=float(group["lr"]),
                    weight_decay=group["weight_decay"],
                    momentum=group["momentum"],
                    nesterov=group["nesterov"],
                    adjust_lr_fn=group["adjust_lr_fn"],
                    ns=NSConfig(steps, coefficients, eps, self.ns_dtype or default_ns_dtype(m.param.device)),
                )
                for m in matrices
            ]
        return work

    def _replicated_updates(self, work: list[_Work]) -> list[tuple[_Work, Tensor]]:
        """Each whole matrix with its update, [heads, rows, cols]: the Muon inputs are written straight
        into their buckets' slots, each bucket orthogonalized by one call (shared across DDP ranks)."""
        by_key: dict[BucketKey, list[_Work]] = {}
        for w in work:
            by_key.setdefault(w.key, []).append(w)
        buckets = {}
        for key, ws in by_key.items():
            buckets[key] = torch.empty(
                sum(w.heads for w in ws), key.rows, key.cols, dtype=key.ns.dtype, device=key.device
            )
            for w, slot in zip(ws, buckets[key].split([w.heads for w in ws]), strict=True):
                grad, buf = w.blocks(w.matrix.grad), w.blocks(w.matrix.buf)
                momentum_input(grad, buf, w.momentum, w.nesterov, out=slot)
        results = self._orthogonalize_buckets(buckets) if buckets else {}
        return [(w, slot.mT if w.tall else slot) for key, ws in by_key.items()
                for w, slot in zip(ws, results[key].split([w.heads for w in ws]), strict=True)]

    def _orthogonalize_buckets(self, buckets: dict[BucketKey, Tensor]) -> dict[BucketKey, Tensor]:
        """Orthogonalize the buckets here, or shared across the DDP ranks when distributed."""
        fn = distributed_bucket_fn(self.distributed) or orthogonalize_buckets
        return fn(buckets)

    @staticmethod
    def _row_sharded_updates(work: list[_Work]) -> list[tuple[_Work, Tensor]]:
        """Each row-sharded matrix with this rank's rows of its update (orthogonalized by its owner)."""
        if not work:
            return []
        mesh = work[0].matrix.mesh
        if any(w.matrix.mesh != mesh for w in work):
            raise ValueError("Muon's DTensor parameters must all be sharded over one device mesh")
        shards = [RowShard(momentum_input(w.matrix.grad, w.matrix.buf, w.momentum, w.nesterov), w.matrix.rows,
                           w.heads, w.ns) for w in work]
        return list(zip(work, row_sharded_orthogonalize(shards, mesh.get_group()), strict=True))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state, keeping momentum buffers in fp32 (torch would cast them to the param dtype)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id)
            if saved is not None and "momentum_buffer" in saved:
                buf = saved["momentum_buffer"]
                self.state[p]["momentum_buffer"] = buf.to(device=p.device, dtype=torch.float32, copy=True)
