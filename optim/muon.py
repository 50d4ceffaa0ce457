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

Muon's own variables are switches (param-group keys): the Newton–Schulz coefficients (one triple or Polar
Express's per-step ones), `orthogonalization="exact"` (the SVD polar factor), `momentum_order`
("orthogonalize_then_momentum" averages orthogonalized gradients instead), `momentum_warmup_steps`
(modded-nanogpt's 0.85 -> momentum warmup) and `normuon_beta2` (NorMuon's per-row normalization).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

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
    METHODS,
    BucketKey,
    Coefficients,
    NSConfig,
    as_coefficients,
    default_ns_dtype,
    orthogonalize,
    orthogonalize_buckets,
)

__all__ = ["DEFAULT_COEFFICIENTS", "Muon", "adjusted_lr", "muon_update", "orthogonalize"]

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
MOMENTUM_ORDERS = ("momentum_then_orthogonalize", "orthogonalize_then_momentum")
# modded-nanogpt's Muon momentum warmup starts here: momentum = (1 - f) * 0.85 + f * target, f = min(t / T, 1)
MOMENTUM_WARMUP_START = 0.85
NORMUON_EPS = 1e-8  # NorMuon's (microsoft/dion's) floor on the per-row RMS and on the rescaled norm


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
    orthogonalization: str = "newton_schulz",
    momentum_order: str = "momentum_then_orthogonalize",
    second_moment: Tensor | None = None,
    normuon_beta2: float = 0.95,
) -> None:
    """One Muon step on one [heads * rows, cols] matrix, in place on `param` and its fp32 momentum `buf`.

    The reference that `Muon` batches (its step gives the same result up to matmul rounding). The
    matrix is orthogonalized as `heads` [rows, cols] blocks; the keywords are `Muon`'s. With
    `second_moment` (fp32, [heads * rows, 1]) it is NorMuon's step (`normalize_rows`).
    """
    grad = grad.float()
    rows, cols = param.shape[0] // heads, param.shape[1]
    ortho = functools.partial(orthogonalize, steps=ns_steps, coefficients=ns_coefficients, eps=eps,
                              dtype=ns_dtype, method=orthogonalization)
    if momentum_order == "momentum_then_orthogonalize":
        update_momentum([buf], [grad], momentum)
        update = ortho(momentum_input(grad, buf, momentum, nesterov).view(heads, rows, cols))
    else:
        orthogonalized = ortho(grad.view(heads, rows, cols))
        update = average_after(orthogonalized, buf.view(heads, rows, cols), momentum, nesterov)
    if second_moment is not None:
        update = normalize_rows(update, second_moment.view(heads, rows, 1), normuon_beta2)
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


def average_after(update: Tensor, buf: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """"Orthogonalize, then momentum": the orthogonalized gradient `update` goes into the momentum `buf`
    (in place) and the Nesterov input of that is the step (fp32)."""
    update = update.float()
    update_momentum([buf], [update], momentum)
    return momentum_input(update, buf, momentum, nesterov)


def normalize_rows(update: Tensor, second_moment: Tensor, beta2: float) -> Tensor:
    """NorMuon (arXiv 2510.05491): divide each row of each [rows, cols] block of `update` by the RMS of
    its rows' EMA (`second_moment`, [..., rows, 1], updated in place), then restore the block's
    Frobenius norm, so the per-neuron step sizes even out but Muon's update size is kept (fp32)."""
    update = update.float()
    norm = update.norm(dim=(-2, -1), keepdim=True)
    second_moment.lerp_(update.square().mean(dim=-1, keepdim=True), 1 - beta2)
    normalized = update / (second_moment.sqrt() + NORMUON_EPS)
    return normalized * (norm / normalized.norm(dim=(-2, -1), keepdim=True).clamp(min=NORMUON_EPS))


def momentum_at(momentum: float, step: int, warmup_steps: int) -> float:
    """The momentum of 0-based step `step`: linear from MOMENTUM_WARMUP_START to `momentum` over
    `warmup_steps` steps (modded-nanogpt), constant without warmup."""
    if warmup_steps <= 0:
        return momentum
    frac = min(step / warmup_steps, 1.0)
    return (1 - frac) * MOMENTUM_WARMUP_START + frac * momentum


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
    orthogonalize_first: bool  # momentum_order="orthogonalize_then_momentum"
    second_moment: Tensor | None  # NorMuon's per-row state, [heads * rows, 1]
    normuon_beta2: float | None

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

    def muon_input(self, grad: Tensor, buf: Tensor, out: Tensor | None = None) -> Tensor:
        """What is orthogonalized: the Nesterov input of the momentum, or the gradient itself when the
        momentum comes after orthogonalization (into `out` if given)."""
        if self.orthogonalize_first:
            return grad if out is None else out.copy_(grad)
        return momentum_input(grad, buf, self.momentum, self.nesterov, out=out)

    def finish(self, update: Tensor) -> Tensor:
        """The step from an orthogonalized `update` (this rank's [.., rows, cols] of the matrix, in its
        orientation): the momentum after orthogonalization and NorMuon's normalization, where switched on."""
        if self.orthogonalize_first:
            update = average_after(update, self.matrix.buf.view(update.shape), self.momentum, self.nesterov)
        if self.second_moment is not None:
            second_moment = self.second_moment.view(*update.shape[:-1], 1)
            update = normalize_rows(update, second_moment, self.normuon_beta2)
        return update


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
    - the variants (also per-param-group keys): `ns_coefficients` may be per-step triples (Polar Express);
      `orthogonalization` "newton_schulz" or "exact" (SVD polar factor); `momentum_order`
      "momentum_then_orthogonalize" (Muon) or "orthogonalize_then_momentum"; `momentum_warmup_steps`
      (`momentum_at`); `normuon_beta2` (None: Muon; a number: NorMuon, `normalize_rows`; not on DTensors).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Coefficients = DEFAULT_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: torch.dtype | None = None,
        split_heads: int | None = None,
        distributed: bool | None = None,
        orthogonalization: str = "newton_schulz",
        momentum_order: str = "momentum_then_orthogonalize",
        momentum_warmup_steps: int = 0,
        normuon_beta2: float | None = None,
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
        if orthogonalization not in METHODS:
            raise ValueError(f"Muon: orthogonalization must be one of {METHODS}, got {orthogonalization!r}")
        if momentum_order not in MOMENTUM_ORDERS:
            raise ValueError(f"Muon: momentum_order must be one of {MOMENTUM_ORDERS}, got {momentum_order!r}")
        if momentum_warmup_steps < 0:
            raise ValueError(f"Muon: momentum_warmup_steps must be >= 0, got {momentum_warmup_steps}")
        if normuon_beta2 is not None and not 0 <= normuon_beta2 < 1:
            raise ValueError(f"Muon: normuon_beta2 must be in [0, 1) or None, got {normuon_beta2}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=as_coefficients(ns_coefficients),
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            split_heads=split_heads,
            orthogonalization=orthogonalization,
            momentum_order=momentum_order,
            momentum_warmup_steps=momentum_warmup_steps,
            normuon_beta2=normuon_beta2,
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
            if group["normuon_beta2"] is not None and isinstance(p, DTensor):
                raise ValueError("NorMuon's per-row normalization needs whole matrices; it does not support "
                                 "FSDP2 (DTensor) parameters: route them to muon or train without train.fsdp")
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
            update = w.finish(update)
            apply_update(w.matrix.param.view_as(update), update, w.lr, w.weight_decay, w.scale)
        return loss

    def _update_momenta(self) -> list[_Work]:
        """Update the momentum of every matrix with a gradient (one foreach call per group and momentum
        value; none when the momentum comes after orthogonalization); return them."""
        work: list[_Work] = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            momenta = [self._momentum_of(p, group) for p in params]
            matrices = [local_matrix(p, self.state[p]["momentum_buffer"]) for p in params]
            orthogonalize_first = group["momentum_order"] == "orthogonalize_then_momentum"
            if not orthogonalize_first:
                for momentum in dict.fromkeys(momenta):  # one value unless the warmup counts differ
                    mine = [m for m, mu in zip(matrices, momenta, strict=True) if mu == momentum]
                    update_momentum([m.buf for m in mine], [m.grad for m in mine], momentum)
            ns_key = (group["ns_steps"], as_coefficients(group["ns_coefficients"]), group["eps"])
            work += [
                _Work(
                    matrix=m,
                    heads=group["split_heads"] or 1,
                    lr=float(group["lr"]),
                    weight_decay=group["weight_decay"],
                    momentum=momentum,
                    nesterov=group["nesterov"],
                    adjust_lr_fn=group["adjust_lr_fn"],
                    ns=NSConfig(*ns_key, self.ns_dtype or default_ns_dtype(m.param.device),
                                group["orthogonalization"]),
                    orthogonalize_first=orthogonalize_first,
                    second_moment=self.state[p].get("second_moment"),
                    normuon_beta2=group["normuon_beta2"],
                )
                for p, m, momentum in zip(params, matrices, momenta, strict=True)
            ]
        return work

    def _momentum_of(self, p: Tensor, group: dict[str, Any]) -> float:
        """`p`'s momentum this step (after its warmup, if any), its state created on its first step."""
        if p.grad.is_sparse:
            raise RuntimeError("Muon does not support sparse gradients")
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
            if group["normuon_beta2"] is not None:
                state["second_moment"] = torch.zeros(p.shape[0], 1, dtype=torch.float32, device=p.device)
        warmup = group["momentum_warmup_steps"]
        if not warmup:
            return group["momentum"]
        step = state.setdefault("step", torch.zeros((), dtype=torch.float32))
        step += 1
        return momentum_at(group["momentum"], int(step) - 1, warmup)

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
                w.muon_input(w.blocks(w.matrix.grad), w.blocks(w.matrix.buf), out=slot)
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
        shards = [RowShard(w.muon_input(w.matrix.grad, w.matrix.buf), w.matrix.rows, w.heads, w.ns)
                  for w in work]
        return list(zip(work, row_sharded_orthogonalize(shards, mesh.get_group()), strict=True))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Groups saved before a switch existed get its default, so older checkpoints load (torch's
        load_state_dict replaces the groups with the saved ones, then calls this)."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state, keeping momentum and NorMuon buffers in fp32 (torch casts them to the param dtype)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id) or {}
            for key in ("momentum_buffer", "second_moment"):
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32, copy=True)
