"""Newton–Schulz work shared across ranks: replicated matrices (DDP) and row-sharded ones (FSDP2).

`Muon` computes on plain tensors only: `local_matrix` is the one place that looks through an FSDP2
DTensor, to this rank's rows of it (every part of the update but orthogonalization is elementwise).

Replicated (DDP): after the all-reduce every rank holds the same gradients, and `Muon` updates the momentum of
every matrix on every rank (cheap, elementwise), so the optimizer state is complete and identical
everywhere and a checkpoint resumes on any world size. Only the expensive part, orthogonalization,
is split: every bucket of same-shape matrices is cut into one contiguous chunk per rank (chunk sizes
differ by at most one; the larger chunks go to the ranks with the least work so far), each rank
orthogonalizes its chunks in one batched call per bucket, and a single all_gather of the flattened
results (padded to the longest rank's) gives every rank every update. Every rank then applies all
updates, so the parameters stay identical without a broadcast (`replicated_orthogonalize`).

Row-sharded (FSDP2, `fully_shard`: parameters, gradients and momentum are DTensors sharded by rows,
`Shard(0)`, over a 1-D mesh): every matrix gets one owner rank, the flops balanced as above but whole
matrices only (same-shape matrices are consecutive, so an owner's share of a shape is one batched call). One
`all_to_all_single` sends each rank's rows of the Muon input of every matrix to the matrix's owner;
the owner stacks the whole matrices by shape, orthogonalizes each stack, and a second
`all_to_all_single` sends every rank its rows of the results; each rank then updates its own shard
(`row_sharded_orthogonalize`). The momentum stays sharded. Per step a rank sends and receives about
2 (W-1)/W^2 of the Muon matrices' elements (W ranks): 1/W of gathering every matrix on every rank.
This is microsoft/dion's scheme, with variable split sizes instead of padding to W matrices.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from optim.newton_schulz import BucketFn, BucketKey, NSConfig, orthogonalize


@dataclass(frozen=True)
class LocalMatrix:
    """A Muon matrix on this rank as plain tensors: parameter, gradient (fp32) and momentum buffer.

    They are the whole [rows, cols] matrix (a plain parameter, replicated across ranks under DDP) or,
    for an FSDP2 DTensor, this rank's rows of it; `mesh` is then the 1-D mesh the rows are sharded over.
    """

    param: Tensor
    grad: Tensor
    buf: Tensor
    rows: int  # the whole matrix's
    mesh: DeviceMesh | None = None


def local_matrix(param: Tensor, buf: Tensor) -> LocalMatrix:
    """`param`, its gradient and its momentum buffer `buf` as this rank holds them (see `LocalMatrix`)."""
    if isinstance(param, DTensor):
        local_grad = param.grad.to_local().float()
        return LocalMatrix(param.to_local(), local_grad, buf.to_local(), param.shape[0], param.device_mesh)
    return LocalMatrix(param, param.grad.float(), buf, param.shape[0])


@dataclass(frozen=True)
class Chunk:
    """Matrices [start, stop) of bucket `key`, orthogonalized by `rank`."""

    key: Hashable
    rank: int
    start: int
    stop: int


def ns_cost(rows: int, cols: int) -> int:
    """Flops of one Newton–Schulz step on a [rows, cols] matrix, up to a constant."""
    return rows * cols * min(rows, cols)


def plan_chunks(sizes: dict[Hashable, tuple[int, int]], world_size: int) -> list[Chunk]:
    """Split each bucket {key: (count, cost of one matrix)} into per-rank chunks, balancing the cost.

    Deterministic: every rank computes the same plan from the same bucket sizes (in dict order).
    """
    load = [0] * world_size
    chunks = []
    for key, (count, cost) in sizes.items():
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


def replicated_orthogonalize(
    buckets: dict[BucketKey, Tensor], group: dist.ProcessGroup | None = None
) -> dict[BucketKey, Tensor]:
    """Orthogonalize each bucket [N, m, n] of replicated matrices, the work split across `group`'s ranks."""
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    sizes = {key: (N, ns_cost(m, n)) for key, (N, m, n) in ((k, s.shape) for k, s in buckets.items())}
    chunks = plan_chunks(sizes, world_size)
    first = next(iter(buckets.values()))
    # one dtype for the one all_gather buffer (all buckets live on the same device under DDP)
    dtype = next(iter(buckets)).ns.dtype
    lengths = [0] * world_size
    for c in chunks:
        _, m, n = buckets[c.key].shape
        lengths[c.rank] += (c.stop - c.start) * m * n
    send = torch.zeros(max(lengths), dtype=dtype, device=first.device)
    offset = 0
    for c in chunks:
        if c.rank == rank and c.stop > c.start:
            out = orthogonalize(buckets[c.key][c.start : c.stop], **c.key.ns._replace(dtype=dtype)._asdict())
            send[offset : offset + out.numel()].view_as(out).copy_(out)
            offset += out.numel()
    gathered = [torch.empty_like(send) for _ in range(world_size)]
    dist.all_gather(gathered, send, group=group)
    parts: dict[BucketKey, list[Tensor]] = {key: [] for key in buckets}
    offsets = [0] * world_size
    for c in chunks:  # chunks of a bucket are in rank order = index order
        _, m, n = buckets[c.key].shape
        size = (c.stop - c.start) * m * n
        parts[c.key].append(gathered[c.rank][offsets[c.rank] : offsets[c.rank] + size].view(-1, m, n))
        offsets[c.rank] += size
    return {key: torch.cat(pieces) for key, pieces in parts.items()}


def distributed_bucket_fn(enabled: bool | None) -> BucketFn | None:
    """The replicated bucket function when enabled (None = when torch.distributed runs with > 1 rank)."""
    running = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if enabled is False or not running:
        return None
    return replicated_orthogonalize


# -- row-sharded (FSDP2): each matrix orthogonalized by its owner ------------------------------


def check_row_sharded(p: Tensor) -> None:
    """Raise unless `p` is plain or a DTensor sharded by rows over a 1-D mesh (fully_shard's layout)."""
    if isinstance(p, DTensor) and (p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),)):
        raise ValueError(
            f"Muon supports DTensor parameters sharded by rows over a 1-D mesh (fully_shard's default, "
            f"placements (Shard(0),)); got a {p.device_mesh.ndim}-D mesh with placements {p.placements}. "
            "shard the model with fully_shard on a 1-D mesh (HSDP and tensor parallelism are not supported)"
        )


@dataclass
class RowShard:
    """This rank's rows (`local`, [its rows, cols]) of the Muon input of a [rows, cols] matrix.

    The matrix is orthogonalized as `heads` blocks of [rows // heads, cols] with `ns`.
    """

    local: Tensor
    rows: int
    heads: int
    ns: NSConfig

    @property
    def cols(self) -> int:
        return self.local.shape[1]

    @property
    def key(self) -> BucketKey:
        """The owner stacks the blocks of its matrices by key and orthogonalizes each stack in one call."""
        return BucketKey(self.rows // self.heads, self.cols, self.local.device, self.ns)


def row_ranges(rows: int, world_size: int) -> list[range]:
    """Each rank's rows of a [rows, ...] tensor sharded by `Shard(0)` (torch.chunk's split, fully_shard's)."""
    size = -(-rows // world_size)
    return [range(min(r * size, rows), min((r + 1) * size, rows)) for r in range(world_size)]


def assign_owners(shards: Sequence[RowShard], world_size: int) -> list[int]:
    """The rank that orthogonalizes each matrix: NS flops balanced, same-shape matrices consecutive."""
    by_shape: dict[Hashable, list[int]] = {}
    for i, s in enumerate(shards):
        by_shape.setdefault((s.rows, s.heads, s.key), []).append(i)
    sizes = {}
    for shape, members in by_shape.items():
        s = shards[members[0]]
        sizes[shape] = (len(members), s.heads * ns_cost(s.rows // s.heads, s.cols))
    owners = [0] * len(shards)
    for c in plan_chunks(sizes, world_size):
        for i in by_shape[c.key][c.start : c.stop]:
            owners[i] = c.rank
    return owners


def row_sharded_orthogonalize(
    shards: Sequence[RowShard], group: dist.ProcessGroup | None = None
) -> list[Tensor]:
    """This rank's rows of each orthogonalized matrix, each matrix orthogonalized by its owner only.

    Every rank passes its shards of the same matrices in the same order. Two all_to_all_single calls:
    rows to the owners, then the owners' results back. The results have the Newton–Schulz dtype.
    """
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    ranges = [row_ranges(s.rows, world_size) for s in shards]
    for s, rows in zip(shards, ranges, strict=True):
        if s.local.shape[0] != len(rows[rank]):
            raise ValueError(f"rank {rank} holds {s.local.shape[0]} rows of a {s.rows}-row matrix, expected "
                             f"{len(rows[rank])}: Muon needs fully_shard's row split (torch.chunk's)")
    owners = assign_owners(shards, world_size)
    mine = [i for i, owner in enumerate(owners) if owner == rank]
    to_owners = sorted(range(len(shards)), key=lambda i: owners[i])  # by owner, then index
    # elements this rank sends to each rank and receives from each (the return trip is the reverse)
    sent = [sum(len(ranges[i][rank]) * shards[i].cols for i in to_owners if owners[i] == dst)
            for dst in range(world_size)]
    received = [sum(len(ranges[i][src]) * shards[i].cols for i in mine) for src in range(world_size)]
    dtype, device = shards[0].ns.dtype, shards[0].local.device
    recv = torch.empty(sum(received), dtype=dtype, device=device)
    send = _flat([shards[i].local for i in to_owners], dtype, device)
    dist.all_to_all_single(recv, send, received, sent, group=group)
    whole = _orthogonalize_owned([shards[i] for i in mine], [ranges[i] for i in mine], recv, world_size)
    back = _flat([m[r[dst].start : r[dst].stop] for dst in range(world_size)
                  for m, r in zip(whole, (ranges[i] for i in mine), strict=True)], dtype, device)
    out = torch.empty(sum(sent), dtype=dtype, device=device)
    dist.all_to_all_single(out, back, sent, received, group=group)
    results, offset = {}, 0
    for i in to_owners:
        size = len(ranges[i][rank]) * shards[i].cols
        results[i] = out[offset : offset + size].view(-1, shards[i].cols)
        offset += size
    return [results[i] for i in range(len(shards))]


def _flat(pieces: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The pieces flattened and concatenated in `dtype` (an empty tensor for none)."""
    if not pieces:
        return torch.empty(0, dtype=dtype, device=device)
    return torch.cat([t.reshape(-1).to(dtype) for t in pieces])


def _orthogonalize_owned(
    owned: Sequence[RowShard], ranges: Sequence[list[range]], recv: Tensor, world_size: int
) -> list[Tensor]:
    """The owned matrices assembled from every rank's rows in `recv` (by source rank, then matrix) into
    one stack per block shape, orthogonalized one call per stack; returned whole, [rows, cols] each."""
    counts: dict[BucketKey, int] = {}
    blocks = []  # each owned matrix's blocks in its stack
    for s in owned:
        first = counts.get(s.key, 0)
        blocks.append(slice(first, first + s.heads))
        counts[s.key] = first + s.heads
    stacks = {key: recv.new_empty(count, key.rows, key.cols) for key, count in counts.items()}
    matrices = [stacks[s.key][b].view(s.rows, s.cols) for s, b in zip(owned, blocks, strict=True)]
    offset = 0
    for src in range(world_size):
        for matrix, r in zip(matrices, ranges, strict=True):
            size = len(r[src]) * matrix.shape[1]
            matrix[r[src].start : r[src].stop] = recv[offset : offset + size].view(-1, matrix.shape[1])
            offset += size
    results = {key: orthogonalize(stack, **key.ns._asdict()) for key, stack in stacks.items()}
    return [results[s.key][b].reshape(s.rows, s.cols) for s, b in zip(owned, blocks, strict=True)]
