"""Newton–Schulz work shared across DDP ranks.

After DDP's all-reduce every rank holds the same gradients, and `Muon` updates the momentum of every
matrix on every rank (cheap, elementwise), so the optimizer state is complete and identical
everywhere and a checkpoint resumes on any world size. Only the expensive part, orthogonalization,
is split: every bucket of same-shape matrices is cut into one contiguous chunk per rank (chunk sizes
differ by at most one; the larger chunks go to the ranks with the least work so far), each rank
orthogonalizes its chunks in one batched call per bucket, and a single all_gather of the flattened
results (padded to the longest rank's) gives every rank every update. Every rank then applies all
updates, so the parameters stay identical without a broadcast.

Under FSDP2 (`fully_shard`: parameters, gradients and momentum are DTensor shards) each Muon update
is gathered whole on every rank (`full_tensor`), orthogonalized shared as above, and every rank
keeps the rows of its own shard (no communication). The momentum stays sharded like the parameters.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from optim.newton_schulz import BucketFn, default_ns_dtype, orthogonalize


@dataclass(frozen=True)
class Chunk:
    """Matrices [start, stop) of bucket `key`, orthogonalized by `rank`."""

    key: Hashable
    rank: int
    start: int
    stop: int


def plan_chunks(sizes: dict[Hashable, tuple[int, int, int]], world_size: int) -> list[Chunk]:
    """Split each bucket {key: (count, m, n)} into per-rank chunks, balancing the NS flops across ranks.

    Deterministic: every rank computes the same plan from the same bucket sizes (in dict order).
    """
    load = [0.0] * world_size
    chunks = []
    for key, (count, m, n) in sizes.items():
        cost = m * n * min(m, n)  # flops of one Newton–Schulz step, up to a constant
        base, extra = divmod(count, world_size)
        # The ranks with the least work so far take the `extra` larger chunks (ties: lower rank).
        order = sorted(range(world_size), key=lambda r: (load[r], r))
        counts = [0] * world_size
        for position, rank in enumerate(order):
            counts[rank] = base + (position < extra)
        start = 0
        for rank in range(world_size):
            chunks.append(Chunk(key, rank, start, start + counts[rank]))
            load[rank] += counts[rank] * cost
            start += counts[rank]
    return chunks


def sharded_orthogonalize(
    buckets: dict[Hashable, Tensor],
    settings: dict[Hashable, dict[str, Any]],
    group: dist.ProcessGroup | None = None,
) -> dict[Hashable, Tensor]:
    """Orthogonalize each bucket [N, m, n] with the work split across the ranks of `group`."""
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    chunks = plan_chunks({key: tuple(stack.shape) for key, stack in buckets.items()}, world_size)
    first = next(iter(buckets.values()))
    # one dtype for the one all_gather buffer (all buckets live on the same device under DDP)
    dtype = next(iter(settings.values()))["dtype"] or default_ns_dtype(first.device)
    lengths = [0] * world_size
    for c in chunks:
        _, m, n = buckets[c.key].shape
        lengths[c.rank] += (c.stop - c.start) * m * n
    send = torch.zeros(max(lengths), dtype=dtype, device=first.device)
    offset = 0
    for c in chunks:
        if c.rank == rank and c.stop > c.start:
            out = orthogonalize(buckets[c.key][c.start : c.stop], **(settings[c.key] | {"dtype": dtype}))
            send[offset : offset + out.numel()].view_as(out).copy_(out)
            offset += out.numel()
    gathered = [torch.empty_like(send) for _ in range(world_size)]
    dist.all_gather(gathered, send, group=group)
    parts: dict[Hashable, list[Tensor]] = {key: [] for key in buckets}
    offsets = [0] * world_size
    for c in chunks:  # chunks of a bucket are in rank order = index order
        _, m, n = buckets[c.key].shape
        size = (c.stop - c.start) * m * n
        parts[c.key].append(gathered[c.rank][offsets[c.rank] : offsets[c.rank] + size].view(-1, m, n))
        offsets[c.rank] += size
    return {key: torch.cat(pieces) for key, pieces in parts.items()}


def distributed_bucket_fn(enabled: bool | None) -> BucketFn | None:
    """The sharded bucket function when enabled (None = when torch.distributed runs with > 1 rank)."""
    running = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if enabled is False or not running:
        return None
    return sharded_orthogonalize


def gather_full(t: Tensor) -> Tensor:
    """The whole matrix of a DTensor (an FSDP2 shard) on every rank; a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(t: Tensor, param: Tensor) -> Tensor:
    """The whole matrix `t` cut to `param`'s local shard when `param` is a DTensor (no communication)."""
    if isinstance(param, DTensor):
        return distribute_tensor(t, param.device_mesh, param.placements, src_data_rank=None)
    return t
