"""optim.dist_muon: Muon shared across 2 CPU processes (gloo), plain, under DDP and FSDP2 == 1 process."""

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from accelerate.utils.other import get_free_port
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import optim.dist_muon
from optim.dist_muon import plan_chunks, row_ranges
from optim.muon import Muon
from training.fsdp import shard_model

# 3 same-shape (uneven split across 2 ranks), odd rows (7: shards of 4 and 3), one row (rank 1 holds
# none of it), and two per-head matrices whose [8, 16] heads batch together: 4 heads, and 3 heads whose
# middle one straddles the two ranks' row shards.
SHAPES = [(24, 40), (24, 40), (24, 40), (40, 24), (16, 16), (7, 24), (1, 8), (32, 16), (24, 16)]
BLOCKS_PER_STEP = 3 + 1 + 1 + 1 + 1 + 4 + 3  # matrices orthogonalized per step, heads counted
STEPS_BEFORE_SAVE, STEPS_AFTER_SAVE = 3, 2


def _params() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).requires_grad_() for s in SHAPES]


def _muon(params: list[torch.Tensor]) -> Muon:
    return Muon([{"params": params[:-2]}, {"params": params[-2:-1], "split_heads": 4},
                 {"params": params[-1:], "split_heads": 3}], lr=0.02, weight_decay=0.1,
                adjust_lr_fn="match_rms_adamw", ns_dtype=torch.float32)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (collective); a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _steps(params: list[torch.Tensor], opt: Muon, start: int, count: int) -> None:
    """Steps start..start+count-1 with gradients that depend only on the step (same on every rank;
    a DTensor parameter gets this rank's rows of it)."""
    for step in range(start, start + count):
        gen = torch.Generator().manual_seed(100 + step)
        for p in params:
            grad = torch.randn(p.shape, generator=gen)
            p.grad = distribute_tensor(grad, p.device_mesh, p.placements, src_data_rank=None) \
                if isinstance(p, DTensor) else grad
        opt.step()


def _sharded_muon_run(sent: list[int]) -> list[torch.Tensor]:
    """The Muon steps on row shards of the same matrices (fully_shard's layout); the whole results."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    params = [torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)], src_data_rank=None))
              for p in _params()]
    opt = _muon(params)
    real = dist.all_to_all_single

    def counting(output, input, output_split_sizes, input_split_sizes, group=None):
        # elements this rank receives from the other ranks (its own rows are a local copy)
        sent.append(sum(output_split_sizes) - output_split_sizes[dist.get_rank(group)])
        return real(output, input, output_split_sizes, input_split_sizes, group=group)

    optim.dist_muon.dist.all_to_all_single = counting
    try:
        _steps(params, opt, 0, STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE)
    finally:
        optim.dist_muon.dist.all_to_all_single = real
    return [_full(p.detach()) for p in params]


def _layout_error() -> str:
    """Muon's error for a DTensor that is not sharded by rows (here: replicated over the mesh)."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    try:
        Muon([torch.nn.Parameter(distribute_tensor(torch.zeros(4, 4), mesh, [Replicate()]))])
    except ValueError as err:
        return str(err)
    return "no error"


def _tiny_cfg() -> tuple:
    from model import ModelConfig
    from optim.config import OptimConfig

    model_cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
                            max_seq_len=16)
    optim_cfg = OptimConfig(muon="hidden", base="adamw", adamw_lr=1e-2, muon_lr=None, embed_lr=None,
                            head_lr=None, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, momentum=0.95,
                            nesterov=True, ns_steps=5, adjust_lr_fn="match_rms_adamw", per_head=True,
                            sgd_momentum=0.9)
    return model_cfg, optim_cfg


def _train_transformer(wrap) -> dict[str, torch.Tensor]:
    """3 steps of the tiny Transformer, wrapped by `wrap` (DDP, FSDP2 or nothing) then given to
    build_optimizer; the same batch on every rank."""
    from model import Transformer
    from optim.build import build_optimizer

    model_cfg, optim_cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = Transformer(model_cfg)
    net = wrap(model)
    opt = build_optimizer(model, optim_cfg)
    for step in range(3):
        idx = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(net(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    full = {k: _full(v.detach()) for k, v in model.state_dict().items()}
    momentum = {n: _full(opt.state[p]["momentum_buffer"]) for n, p in model.named_parameters()
                if "momentum_buffer" in opt.state[p]}
    return {"params": full, "momentum": momentum}


def _fully_shard(model: torch.nn.Module) -> torch.nn.Module:
    return shard_model(model, torch.device("cpu"), dist.get_world_size())  # as train.py shards it


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    orthogonalized = []
    real = optim.dist_muon.orthogonalize

    def counting(G: torch.Tensor, **kw) -> torch.Tensor:
        orthogonalized.append(G.shape[0])
        return real(G, **kw)

    optim.dist_muon.orthogonalize = counting  # to check each rank did only its share
    params = _params()
    opt = _muon(params)
    _steps(params, opt, 0, STEPS_BEFORE_SAVE)
    saved = copy.deepcopy(opt.state_dict())  # state_dict() holds references to the live buffers
    _steps(params, opt, STEPS_BEFORE_SAVE, STEPS_AFTER_SAVE)
    muon_share = list(orthogonalized)  # the Muon steps' share (the runs below add more)
    orthogonalized.clear()
    received: list[int] = []
    sharded = _sharded_muon_run(received)
    sharded_share = list(orthogonalized)
    ddp = _train_transformer(lambda m: torch.nn.parallel.DistributedDataParallel(m))
    fsdp = _train_transformer(_fully_shard)
    torch.save({"params": [p.detach() for p in params], "saved": saved, "state": opt.state_dict(),
                "orthogonalized": muon_share, "sharded": sharded, "sharded_orthogonalized": sharded_share,
                "received": received, "layout_error": _layout_error(), "ddp": ddp, "fsdp": fsdp},
               Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist_muon")
    mp.spawn(_worker, args=(2, get_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_process() -> tuple[list[torch.Tensor], Muon]:
    params = _params()
    opt = _muon(params)
    _steps(params, opt, 0, STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE)
    return params, opt


def test_plan_chunks_covers_every_matrix_and_balances():
    sizes = {"a": (5, 64**3), "b": (1, 128 * 512 * 128), "c": (4, 8**3)}
    chunks = plan_chunks(sizes, 2)
    for key, (count, _) in sizes.items():
        mine = [c for c in chunks if c.key == key]
        assert [c.rank for c in mine] == [0, 1]
        assert mine[0].start == 0 and mine[0].stop == mine[1].start and mine[1].stop == count
        assert abs((mine[0].stop - mine[0].start) - (mine[1].stop - mine[1].start)) <= 1
    # "a": rank 0 takes the extra matrix; "b" (single): goes to rank 1, the less loaded one
    assert [(c.start, c.stop) for c in chunks if c.key == "b"] == [(0, 0), (0, 1)]
    assert plan_chunks(sizes, 2) == chunks  # deterministic
    assert all(c.stop - c.start in (2, 3) for c in plan_chunks({"x": (11, 64)}, 4))


def test_row_ranges_split_as_torch_chunk():
    """fully_shard splits rows as torch.chunk does (the last ranks may get fewer or none)."""
    for rows in (1, 5, 7, 8, 24):
        for world in (2, 3, 4):
            chunks = [len(c) for c in torch.arange(rows).chunk(world)]
            assert [len(r) for r in row_ranges(rows, world)] == chunks + [0] * (world - len(chunks))


@pytest.mark.slow
def test_two_ranks_match_one_process(two_ranks, one_process):
    params, opt = one_process
    for rank_result in two_ranks:
        for got, want in zip(rank_result["params"], params, strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=0, atol=0)
    # the parameters are identical on the two ranks, bit for bit
    for a, b in zip(two_ranks[0]["params"], two_ranks[1]["params"], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["orthogonalized", "sharded_orthogonalized"])
def test_each_rank_orthogonalized_only_its_share(two_ranks, kind):
    total = (STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE) * BLOCKS_PER_STEP
    counts = [sum(r[kind]) for r in two_ranks]
    assert sum(counts) == total and min(counts) > 0, counts


def test_row_sharded_muon_matches_one_process(two_ranks, one_process):
    """FSDP2's layout (DTensor row shards): each matrix's rows all-to-all to its owner and back."""
    params, _ = one_process
    for rank_result in two_ranks:
        for got, want in zip(rank_result["sharded"], params, strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)


def test_other_dtensor_layouts_are_rejected_clearly(two_ranks):
    for rank_result in two_ranks:
        assert "sharded by rows" in rank_result["layout_error"] and "Replicate" in rank_result["layout_error"]


def test_row_sharded_muon_moves_a_world_size_less_than_gathering(two_ranks):
    """Per step, all ranks together receive about 2 (W-1)/W of the matrices' elements (there and back);
    gathering every matrix on every rank and sharing the results would move 2 (W-1) times them."""
    steps, world = STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE, 2
    received = sum(sum(r["received"]) for r in two_ranks) / steps
    elements = sum(rows * cols for rows, cols in SHAPES)
    gathering = 2 * (world - 1) * elements
    assert 0 < received <= gathering / world + sum(2 * cols for _, cols in SHAPES)


def test_state_is_complete_and_identical_on_every_rank(two_ranks, one_process):
    _, opt = one_process
    want = opt.state_dict()["state"]
    for rank_result in two_ranks:
        state = rank_result["state"]["state"]
        assert set(state) == set(want) == set(range(len(SHAPES)))
        for i, s in want.items():
            torch.testing.assert_close(state[i]["momentum_buffer"], s["momentum_buffer"], rtol=0, atol=0)


def test_state_saved_by_two_ranks_resumes_in_one_process(two_ranks):
    for rank_result in two_ranks:
        params = _params()
        opt = _muon(params)
        _steps(params, opt, 0, STEPS_BEFORE_SAVE)  # reach the saved parameters
        for p, saved in zip(params, rank_result["params"], strict=True):
            assert not torch.equal(p.detach(), saved)  # (saved params are after all steps)
        opt.load_state_dict(rank_result["saved"])
        _steps(params, opt, STEPS_BEFORE_SAVE, STEPS_AFTER_SAVE)
        for got, want in zip(params, rank_result["params"], strict=True):
            torch.testing.assert_close(got.detach(), want, rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_training_with_build_optimizer_matches_one_process(two_ranks, wrapper):
    want = _train_transformer(lambda m: m)
    assert len(want["momentum"]) == 14  # every Muon matrix (7 per layer) has its momentum
    # DDP: bit-exact; FSDP2: the reduce-scatter may sum in another order than one process
    tol = dict(rtol=0, atol=0) if wrapper == "ddp" else dict(rtol=1e-5, atol=1e-6)
    for rank_result in two_ranks:
        got = rank_result[wrapper]
        for kind in ("params", "momentum"):
            assert set(got[kind]) == set(want[kind])
            for name, value in want[kind].items():
                torch.testing.assert_close(got[kind][name], value, **tol, msg=f"{kind} {name}")


def test_distributed_can_be_disabled_and_is_off_without_process_group():
    assert optim.dist_muon.distributed_bucket_fn(None) is None  # no process group here
    assert optim.dist_muon.distributed_bucket_fn(False) is None
