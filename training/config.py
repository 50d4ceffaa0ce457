"""The run configuration: a typed schema, YAML presets and dotted command-line overrides.

`load_config(["configs/a.yaml"], ["optim.muon=vo,ffn"])` merges the schema defaults, each YAML
file in order and then the overrides. Unknown keys and ill-typed values are errors, never
silently ignored: the schema is an OmegaConf structured config.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from common.errors import UserError
from metrics.tail import MODES as TAIL_MODES
from model import ModelConfig
from optim.config import OptimConfig
from optim.muon import ADJUST_LR_FNS, MOMENTUM_ORDERS
from optim.newton_schulz import METHODS, NS_COEFFICIENTS
from optim.registry import NS_DTYPES, bases, checked_keys, sections
from optim.routing import routing_of
from optim.schedules import SCHEDULES, Schedule
from training.runtime import PRECISIONS


class ConfigError(UserError):
    """A configuration the user has to fix (unknown key, bad value, missing file)."""


MODEL_KEYS_DOC = """`model.preset` plus every ModelConfig field as an optional override (null: the preset's).

Keys:
    preset: tiny, small, gpt2-160m or 0.7b (docs/model.md); the fields below override it
    vocab_size: embedding rows; null: the tokenizer's vocabulary, padded to a multiple of 64
    d_model: width of the residual stream
    n_layers: decoder layers
    n_heads: attention (query) heads
    n_kv_heads: key/value heads (grouped-query attention when fewer than n_heads)
    ffn_hidden: hidden width of the FFN
    ffn_type: swiglu (gated: gate_proj, up_proj, down_proj), gelu or relu2 (non-gated)
    max_seq_len: longest sequence (RoPE tables); train.seq_len must fit
    tie_embeddings: share the embedding and the head (no lm_head)
    qk_norm: RMS-normalize queries and keys per head
    rope_theta: RoPE base frequency
    norm_eps: RMSNorm epsilon
    init_std: standard deviation of the initial weights
"""


def _model_section() -> type:
    """`model.preset` plus every ModelConfig field as an optional override (None = the preset's)."""
    fields = [("preset", str, field(default="tiny"))]
    for f in dataclasses.fields(ModelConfig):
        fields.append((f.name, Any, field(default=None)))
    return dataclasses.make_dataclass("ModelSection", fields, namespace={"__doc__": MODEL_KEYS_DOC})


ModelSection = _model_section()


@dataclass
class TrainSection:
    """The training loop.

    Keys:
        steps: optimizer steps of the run (the schedule depends on it; to continue a run use extend_to)
        batch_size: global batch in sequences, whatever the number of processes
        micro_batch_size: sequences per device and forward pass; null: batch_size / processes
        seq_len: tokens per sequence
        seed: seed of the initialization and of the data order
        log_every: steps between train/loss events
        eval_every: steps between evaluations (eval/loss, tail buckets, spectra, QA)
        eval_tokens: validation tokens per evaluation
        checkpoint_every: steps between checkpoints; 0: only at the end
        keep_checkpoints: how many of the newest checkpoints to keep
        resume: auto (continue from the newest checkpoint), none (refuse a used directory) or a checkpoint
        compile: torch.compile the model
        precision: auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32
        fsdp: FSDP2: shard weights, gradients and optimizer state over the processes
        extend_to: continue a finished run to this many steps, where that is exact (constant, wsd)
    """

    steps: int = 400
    batch_size: int = 16
    micro_batch_size: int | None = None
    seq_len: int = 128
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_tokens: int = 65536
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    resume: str = "auto"
    compile: bool = False
    precision: str = "auto"
    fsdp: bool = False  # as accelerate launch --use_fsdp --fsdp_version 2
    extend_to: int | None = None


@dataclass
class DataSection:
    """The training data (docs/data.md).

    Keys:
        source: builtin:shakespeare, a path/glob (.txt/.jsonl/.parquet), hf:NAME[:CONFIG], bios; join with +
        vocab_size: vocabulary of the byte-level BPE trained when tokenizer is null
        tokenizer: null: train a byte-level BPE; else a tokenizer.json path or a hub name (gpt2)
        dir: a prepared dataset directory; null: the cache's, derived from these settings
        text_field: the text column of jsonl/parquet/hf sources
        tokens: cap on the training tokens prepared (large hf sources); null: all
        val_tokens: validation tokens, taken first; null: 10M (builtin corpora split by work)
        bos_aligned: start every training window at a document start (after an EOS)
        bios: settings of the biography QA task (data.bios.BiosConfig), e.g. {people: 512}
    """

    source: str = "builtin:shakespeare"
    vocab_size: int = 4096
    tokenizer: str | None = None
    dir: str | None = None
    text_field: str = "text"
    tokens: int | None = None
    val_tokens: int | None = None
    bos_aligned: bool = False
    bios: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricsSection:
    """What each evaluation measures besides eval/loss (docs/instruments.md).

    Keys:
        tail_buckets: token-frequency buckets of eval/tail/* (bucket 0: the most frequent types)
        tail_mode: share (buckets of equal share of the training tokens) or log (equal width in log count)
        spectra_every: steps between spectra; null: at every eval; 0: off
        qa_every: steps between QA accuracy (bios sources only); null: at every eval; 0: off
        qa_max_per_group: questions per frequency group of the QA evaluation
        peak_flops: the accelerator's peak FLOP/s for perf/mfu; null: known GPUs only
        curvature_every: curvature/<group>/* at evals on multiples of N steps; 0: off
    """

    tail_buckets: int = 10
    tail_mode: str = "share"
    spectra_every: int | None = None
    qa_every: int | None = None
    qa_max_per_group: int = 256
    peak_flops: float | None = None
    curvature_every: int = 0


@dataclass
class RunSection:
    """Where the run goes.

    Keys:
        name: the run's name; null: derived from preset, FFN, routing and seed
        dir: the run directory; null: runs/<name>-<hash of what the run computes>
    """

    name: str | None = None
    dir: str | None = None


@dataclass
class LoggingSection:
    """Experiment tracking (the run directory's metrics log is always written).

    Keys:
        wandb: also log to Weights & Biases
        wandb_project: the wandb project
        wandb_group: the wandb group; null: derived from the config
        wandb_tags: wandb tags; empty: derived from the config
        wandb_mode: online or offline; null: online with credentials, offline without
    """

    wandb: bool = False
    wandb_project: str = "muonlab"
    wandb_group: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_mode: str | None = None


@dataclass
class RunConfig:
    """A run's whole configuration.

    Keys:
        model: the transformer's shape (a preset and its overrides)
        optim: routing, learning rates, each optimizer's settings
        train: the training loop
        data: the training data
        metrics: what each evaluation measures
        run: where the run goes
        logging: experiment tracking
    """

    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    run: RunSection = field(default_factory=RunSection)
    logging: LoggingSection = field(default_factory=LoggingSection)


def load_config(files: Sequence[str] = (), overrides: Sequence[str] = ()) -> RunConfig:
    """Schema defaults <- each YAML file in order <- dotted `key=value` overrides, as typed sections."""
    cfg = OmegaConf.structured(RunConfig)
    for path in files:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path} (give a path such as configs/smoke.yaml)")
        cfg = _merge(cfg, OmegaConf.load(path), f"in {path}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. optim.muon=vo,ffn)")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"in override '{item}'")
    _validate(cfg)
    return OmegaConf.to_object(cfg)


def config_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds)."""
    return OmegaConf.to_yaml(cfg)


def as_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as nested plain dicts (wandb's config, comparisons)."""
    return dataclasses.asdict(cfg)


def _merge(cfg: DictConfig, other: Any, where: str) -> DictConfig:
    """OmegaConf.merge, with its errors said in our words: an unknown key with the nearest valid one, a
    bad value with the type its key expects."""
    try:
        return OmegaConf.merge(cfg, other)
    except ConfigKeyError as err:
        raise ConfigError(_unknown_key(err.full_key, where)) from None
    except ValidationError as err:
        if not err.full_key:  # a whole section given a value (model=3, or "train: 5" in a file)
            sections = ", ".join(f.name for f in dataclasses.fields(RunConfig))
            raise ConfigError(f"a config section ({sections}) was given a value, not keys ({where}); set "
                              "its keys, e.g. train.steps=100") from None
        expected = _expected(err.full_key)
        raise ConfigError(f"{err.full_key}={err.value}: expected {expected} ({where})") from None
    except OmegaConfBaseException as err:  # anything else OmegaConf rejects: its own first line
        raise ConfigError(f"{str(err).splitlines()[0]} ({where})") from None


def _unknown_key(key: str, where: str) -> str:
    """'unknown key 'stepz'; did you mean train.steps? (in override 'stepz=60'; valid keys of ...)'."""
    parent, _, leaf = key.rpartition(".")
    known = [k for k, _, _ in schema_leaves()]
    # The nearest key by its last part (stepz -> train.steps), preferring the same section.
    leaves: dict[str, str] = {}
    for k in sorted(known, key=lambda k: not k.startswith(f"{parent}.")):
        leaves.setdefault(k.rpartition(".")[2], k)
    close = difflib.get_close_matches(leaf, leaves, n=1) or difflib.get_close_matches(key, known, n=1)
    guess = f"; did you mean {leaves.get(close[0], close[0])}?" if close else ""
    prefix = f"{parent}." if any(k.startswith(f"{parent}.") for k in known) else ""
    valid = dict.fromkeys(k[len(prefix):].split(".")[0] for k in known if k.startswith(prefix))
    return (f"unknown key '{key}'{guess} ({where}; valid keys of {parent if prefix else 'the config'}: "
            f"{', '.join(valid)})")


def schema_leaves(cls: type | None = None, prefix: str = "") -> Iterator[tuple[str, type, str]]:
    """(dotted key, the config dataclass that holds it, its field name) of every leaf key, in schema order."""
    for name, hint in typing.get_type_hints(cls or RunConfig).items():
        if dataclasses.is_dataclass(hint):
            yield from schema_leaves(hint, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", cls or RunConfig, name


def _expected(key: str) -> str:
    """What a key's schema type accepts, in words ('an integer', 'true or false', 'a list ...'); for an
    element of a list key (optim.betas[0]), what the elements are."""
    leaf = re.sub(r"\[\d+\]$", "", key)
    owner, name = next(((owner, name) for k, owner, name in schema_leaves() if k == leaf), (None, None))
    if owner is None:
        return "keys, not a value (a config section)"
    hint = typing.get_type_hints(owner)[name]
    if leaf != key:
        hint = typing.get_args(hint)[0]
    optional = type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a list such as [a, b]", dict: "a mapping such as {key: value}"}
    return words.get(typing.get_origin(base) or base, str(base)) + (" or null" if optional else "")


# Each choice is defined by the module that implements it.
CHOICES: dict[str, tuple[str, ...]] = {
    "optim.base": bases(),
    "optim.schedule": SCHEDULES,
    "optim.adjust_lr_fn": tuple(fn for fn in ADJUST_LR_FNS if fn is not None),
    "optim.ns_dtype": tuple(NS_DTYPES),
    "optim.ns_coefficients": tuple(NS_COEFFICIENTS),
    "optim.orthogonalize": METHODS,
    "optim.momentum_order": MOMENTUM_ORDERS,
    "train.precision": PRECISIONS,
    "metrics.tail_mode": TAIL_MODES,
}


def _validate(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value} is not one of {', '.join(allowed)}")
    t = cfg.train
    for key in ("steps", "batch_size", "seq_len", "log_every", "eval_tokens"):
        if t[key] <= 0:
            raise ConfigError(f"train.{key} must be positive, got {t[key]}")
    if t.micro_batch_size is not None and t.micro_batch_size <= 0:
        raise ConfigError(f"train.micro_batch_size must be positive, got {t.micro_batch_size}")
    if t.extend_to is not None and t.extend_to <= t.steps:
        raise ConfigError(f"train.extend_to={t.extend_to} must exceed train.steps={t.steps}, the length of "
                          "the run to extend")
    o = cfg.optim
    nonnegative, fractions = checked_keys()  # each optimizer's, from the registry
    for key in ("adamw_lr", "embed_lr", "head_lr", "weight_decay", "grad_clip", *nonnegative):
        value = OmegaConf.select(o, key)
        if value is not None and not value >= 0:
            raise ConfigError(f"optim.{key} must be >= 0, got {value}")
    for key in fractions:
        value = OmegaConf.select(o, key)
        if not 0 <= value < 1:
            raise ConfigError(f"optim.{key} must be in [0, 1), got {value}")
    # The routing resolved to route entries (the optim.muon shorthand too): their syntax and names. Layer
    # ranges and overlaps need the model.
    routing_of(o)
    try:
        schedule_of(cfg)
    except ValueError as err:
        raise ConfigError(f"optim.{err} (train.steps={t.steps})") from None


def schedule_of(cfg: RunConfig | DictConfig) -> Schedule:
    """The run's learning-rate schedule."""
    o = cfg.optim
    return Schedule(cfg.train.steps, o.schedule, o.warmup_steps, o.min_lr_ratio, o.decay_fraction)


# Keys (and key prefixes) added after run directories were first named by config_hash: every
# optimizer's section (optim.<name>.*) among them, so that adding an optimizer keeps every hash.
LATER_KEYS = (
    "optim.route", "optim.ns_coefficients", "optim.orthogonalize", "optim.momentum_order",
    "optim.momentum_warmup_steps", *(f"optim.{spec.name}." for spec in sections()), "metrics.curvature_every",
)

# Keys that may change between an interrupted run and its resumption without changing its result.
# `train.steps` is not one of them: the schedule depends on it (extending a run is `train.extend_to`).
RESUMABLE_KEYS = (
    "train.resume", "train.extend_to", "train.micro_batch_size", "train.compile", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.fsdp", "run.dir", "run.name",
)
