"""The two ways of running the GPU check: on a GPU (`GPU`), and reduced on a CPU (`CPU_SMOKE`).

Each part's limit is its estimated time on one H100/H200 with some headroom; the reasoning is kept
beside each number, so a measured run can correct it. The whole check is held to `budget_s` (480 s:
a GPU window of ~8 minutes of work); parts run in order of value, so the ones the budget cuts are the
least needed, and a second call with `--parts` runs those.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mode:
    """Sizes and limits of one way of running the check."""

    name: str
    device: str
    preset: str
    batch: int
    seq: int
    dtype: str
    compile: bool
    bench_steps: int  # timed steps (train step) or rounds (Muon share, NS buckets, loss chunks)
    chunk_sizes: tuple[int, ...]
    chunk_shape: tuple[int, int, int]  # rows (tokens), d_model, vocabulary of the loss sweep
    run_overrides: tuple[str, ...]  # train.py overrides of the real runs, beyond configs/bios.yaml
    log_every: int  # the real runs' train.log_every
    budget_s: float
    limits: dict[str, float] = field(default_factory=dict)  # per part, seconds; absent: CPU_LIMIT_S
    env: dict[str, str] = field(default_factory=dict)  # for every subprocess


# Both real runs: no evaluation but the one at the end, a checkpoint only at the end (or the stop).
RUN_COMMON = ("train.eval_every=0", "train.checkpoint_every=0", "metrics.qa_every=0",
              "metrics.spectra_every=0")
# The real runs train gpt2-160m's body on the synthetic biographies. A BPE trained on that small corpus
# cannot reach GPT-2's 50k vocabulary, so the vocabulary is set to 50304 padded rows by hand: the model
# is then the 162M-parameter gpt2-160m (untied embedding and head) whose step train_step times.
GPT2_VOCAB = 50304

GPU = Mode(
    name="gpu", device="cuda", preset="gpt2-160m", batch=16, seq=1024, dtype="bf16", compile=True,
    bench_steps=20, chunk_sizes=(256, 512, 1024, 2048, 4096, 8192), chunk_shape=(16384, 768, GPT2_VOCAB),
    run_overrides=(*RUN_COMMON, "model.preset=gpt2-160m", "model.ffn_type=gelu", "optim.adamw_lr=3e-3",
                   "train.steps=200", "train.batch_size=16", "train.seq_len=1024", "train.precision=bf16",
                   "train.compile=true", f"model.vocab_size={GPT2_VOCAB}"),
    log_every=10, budget_s=480.0,
    limits={
        # pytest start-up ~10 s; test_gpu.py compiles a tiny model (~20 s) and runs a few bf16 checks.
        "gpu_tests": 60,
        # 4 models of ~160M built (the Llama twin via to_hf, ~5 s each), 2 + 20 steps each at
        # ~0.1-0.2 s, and one profiled forward each.
        "train_step_eager": 60,
        # A cold inductor compile of the 160M model with the fused loss is 40-90 s on a fast node, Llama's
        # about the same; the second optimizer of each model reuses the graph (inductor's cache, ~10 s).
        "train_step_compiled": 200,
        # an eager train step timed with Muon inside it, and each NS bucket alone: ~20 s of GPU work.
        "muon_step": 45,
        # bios generation and its BPE ~15 s, a compile (another graph: GELU, 40-90 s), 200 steps x ~0.15 s.
        "real_run": 150,
        # two launches of the same run; inductor's cache makes each compile ~10-20 s.
        "stop_resume": 120,
        # 7 chunk sizes + the unfused loss at 16k x 768 x 50304, 20 rounds each: ~10 s of GPU work.
        "loss_chunks": 45,
        # 4 contenders x 2 modes in fresh processes; the compiled ones compile again (cached).
        "train_memory": 150,
    },
)
CPU_SMOKE = Mode(
    name="cpu-smoke", device="cpu", preset="tiny", batch=2, seq=32, dtype="fp32", compile=False,
    bench_steps=2, chunk_sizes=(64, 256), chunk_shape=(512, 64, 2048),
    run_overrides=(*RUN_COMMON, "model.d_model=64", "model.n_layers=2", "model.n_heads=2",
                   "model.n_kv_heads=2", "model.ffn_hidden=128", "data.vocab_size=512",
                   "data.bios.n_people=32", "data.bios.n_groups=2", "data.bios.max_exposures=8",
                   "train.steps=20", "train.batch_size=8", "train.seq_len=64", "train.precision=fp32",
                   "train.compile=false"),
    log_every=2, budget_s=600.0,
    env={"OMP_NUM_THREADS": "1"},  # on 2 busy cores, more threads than free cores only spin
)
CPU_LIMIT_S = 180.0
MIN_PART_S = 10.0  # a part is not started with less of the budget left
