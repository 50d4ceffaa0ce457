"""Muon: momentum SGD whose update is orthogonalized by a Newton–Schulz iteration.

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
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from optim.dist_muon import RowShard, check_row_sharded, distributed_bucket_fn, ns_key, owner_orthogonalize
from optim.newton_schulz import DEFAULT_COEFFICIENTS, default_ns_dtype, orthogonalize, orthogonalize_buckets

__all__ = ["DEFAULT_COEFFICIENTS", "Muon", "adjusted_lr", "orthogonalize"]

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


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


@dataclass
class _Work:
    """One parameter's pending update: `heads` (1 unless split per head) [rows, cols] blocks.

    The Muon input is lerp(source, buf, weight) (Nesterov) or `source` (buf None). For a plain
    parameter it is the whole matrix, written straight into its bucket's [heads, rows, cols] slot, cast
    to the Newton–Schulz dtype; for a DTensor (FSDP2) `source` is this rank's rows of it (buf None).
    """

    param: Tensor
    source: Tensor
    buf: Tensor | None
    weight: float
    heads: int
    lr: float
    weight_decay: float
    adjust_lr_fn: str | None
    ns: dict[str, Any]  # orthogonalize() keywords, dtype resolved

    @property
    def rows(self) -> int:
        return self.param.shape[0] // self.heads  # a DTensor's shape is the whole matrix's

    @property
    def cols(self) -> int:
        return self.param.shape[1]

    @property
    def tall(self) -> bool:
        """A plain tall block is bucketed transposed: [d, 4d] and [4d, d] matrices share one batched call."""
        return self.rows > self.cols and not isinstance(self.param, DTensor)

    @property
    def key(self) -> Hashable:
        """Matrices with equal keys are orthogonalized in one batched call, as [heads, *key[:2]] blocks."""
        shape = (self.cols, self.rows) if self.tall else (self.rows, self.cols)
        return (*shape, self.param.device, *ns_key(self.ns))

    def blocks(self, t: Tensor) -> Tensor:
        """`t` ([heads * rows, cols]) as [heads, rows, cols], transposed to [heads, cols, rows] if tall."""
        blocks = t.view(self.heads, self.rows, self.cols)
        return blocks.mT if self.tall else blocks

    def write_input(self, slot: Tensor) -> None:
        """Write the Muon input into `slot` (the bucket's [heads, *key[:2]], NS dtype)."""
        if self.buf is None:
            slot.copy_(self.blocks(self.source))
        else:
            torch.lerp(self.blocks(self.source), self.blocks(self.buf), self.weight, out=slot)

    def apply(self, update: Tensor) -> None:
        """p <- p * (1 - lr * weight_decay) - adjusted_lr * update (for a DTensor: its rows of the update).

        `update` is the bucket's slot ([heads, *key[:2]]) for a plain parameter, rows for a DTensor.
        """
        local = self.param.to_local() if isinstance(self.param, DTensor) else self.param
        local.mul_(1 - self.lr * self.weight_decay)
        scale = adjusted_lr(self.lr, self.adjust_lr_fn, self.rows, self.cols)
        if isinstance(self.param, DTensor):
            local.add_(update.reshape(local.shape), alpha=-scale)
        else:
            self.blocks(local).add_(update, alpha=-scale)  # in place through the (transposed) view


class Muon(torch.optim.Optimizer):
    """Muon with the constructor keywords and update rule of `torch.optim.Muon`.

    Per step and matrix: buf <- lerp(buf, grad, 1 - momentum) (fp32 state); update = lerp(grad, buf,
    momentum) with Nesterov, else buf; O = orthogonalize(update); p <- p * (1 - lr * weight_decay)
    - adjusted_lr(lr) * O. Extra keywords beyond torch's:

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

    def _orthogonalize(
        self, buckets: dict[Hashable, Tensor], settings: dict[Hashable, dict[str, Any]]
    ) -> dict[Hashable, Tensor]:
        """Orthogonalize the buckets here, or shared across the DDP ranks when distributed."""
        fn = distributed_bucket_fn(self.distributed) or orthogonalize_buckets
        return fn(buckets, settings)

    def _collect(self) -> list[_Work]:
        """Update the momentum of every parameter with a gradient; return the matrices to orthogonalize."""
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
            grads = [p.grad.float() for p in params]
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            momentum, nesterov = group["momentum"], group["nesterov"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            ns = dict(steps=group["ns_steps"], coefficients=tuple(group["ns_coefficients"]), eps=group["eps"])
            for p, g, buf in zip(params, grads, bufs, strict=True):
                if isinstance(p, DTensor):  # FSDP2: this rank's rows, sent to the matrix's owner
                    source, buf_arg = (torch.lerp(g, buf, momentum) if nesterov else buf).to_local(), None
                else:
                    source, buf_arg = (g, buf) if nesterov else (buf, None)
                work.append(
                    _Work(
                        param=p,
                        source=source,
                        buf=buf_arg,
                        weight=momentum,
                        heads=group["split_heads"] or 1,
                        lr=float(group["lr"]),
                        weight_decay=group["weight_decay"],
                        adjust_lr_fn=group["adjust_lr_fn"],
                        ns=ns | {"dtype": self.ns_dtype or default_ns_dtype(p.device)},
                    )
                )
        return work

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step (same-shape matrices stacked and orthogonalized together)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._collect()
        whole = [w for w in work if not isinstance(w.param, DTensor)]
        sharded = [w for w in work if isinstance(w.param, DTensor)]
        for w, update in self._whole_updates(whole) + self._sharded_updates(sharded):
            w.apply(update)
        return loss

    def _whole_updates(self, work: list[_Work]) -> list[tuple[_Work, Tensor]]:
        """Each plain matrix with its orthogonalized update, [heads, rows, cols] (shared across DDP ranks)."""
        by_key: dict[Hashable, list[_Work]] = {}
        for w in work:
            by_key.setdefault(w.key, []).append(w)
        buckets, settings = {}, {}
        for key, ws in by_key.items():
            rows, cols, device, dtype = key[:4]
            buckets[key] = torch.empty(sum(w.heads for w in ws), rows, cols, dtype=dtype, device=device)
            for w, slot in zip(ws, buckets[key].split([w.heads for w in ws]), strict=True):
                w.write_input(slot)
            settings[key] = ws[0].ns
        results = self._orthogonalize(buckets, settings) if buckets else {}
        return [pair for key, ws in by_key.items()
                for pair in zip(ws, results[key].split([w.heads for w in ws]), strict=True)]

    @staticmethod
    def _sharded_updates(work: list[_Work]) -> list[tuple[_Work, Tensor]]:
        """Each DTensor matrix with this rank's rows of its orthogonalized update (made by its owner)."""
        if not work:
            return []
        mesh = work[0].param.device_mesh
        if any(w.param.device_mesh != mesh for w in work):
            raise ValueError("Muon's DTensor parameters must all be sharded over one device mesh")
        shards = [RowShard(w.source, w.param.shape[0], w.heads, w.ns) for w in work]
        return list(zip(work, owner_orthogonalize(shards, mesh.get_group()), strict=True))

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
