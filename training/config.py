"""The run configuration: a typed schema, YAML presets and dotted command-line overrides.

`load_config(["configs/a.yaml"], ["optim.muon=vo,ffn"])` merges the schema defaults, each YAML
file in order and then the overrides. Unknown keys and ill-typed values are errors, never
silently ignored: the schema is an OmegaConf structured config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import UserError
from metrics.tail import MODES as TAIL_MODES
from model import ModelConfig
from optim.build import BASES, NS_DTYPES
from optim.config import OptimConfig
from optim.groups import spec_tokens
from optim.muon import ADJUST_LR_FNS, MOMENTUM_ORDERS
from optim.newton_schulz import METHODS, NS_COEFFICIENTS
from optim.routing import routing_rules
from optim.schedules import SCHEDULES, Schedule
from training.runtime import PRECISIONS


class ConfigError(UserError):
    """A configuration the user has to fix (unknown key, bad value, missing file)."""


def _model_section() -> type:
    """`model.preset` plus every ModelConfig field as an optional override (None = the preset's)."""
    fields = [("preset", str, field(default="tiny"))]
    for f in dataclasses.fields(ModelConfig):
        fields.append((f.name, Any, field(default=None)))
    return dataclasses.make_dataclass("ModelSection", fields)


ModelSection = _model_section()


@dataclass
class TrainSection:
    steps: int = 400
    batch_size: int = 16  # global, in sequences, whatever the number of processes
    micro_batch_size: int | None = None  # per device; None = batch_size / processes (no accumulation)
    seq_len: int = 128
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_tokens: int = 65536
    checkpoint_every: int = 200  # 0: only at the end
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto | none | path to a checkpoint directory
    compile: bool = False
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    fsdp: bool = False  # FSDP2: shard weights, gradients, optimizer state (as accelerate launch --use_fsdp)
    extend_to: int | None = None  # continue a run to this many steps, where exact (constant/WSD schedules)


@dataclass
class DataSection:
    source: str = "builtin:shakespeare"
    vocab_size: int = 4096
    tokenizer: str | None = None  # None: train a byte-level BPE; else tokenizer.json path or hub name
    dir: str | None = None  # a prepared dataset directory; None: cached, derived from the settings
    text_field: str = "text"
    tokens: int | None = None  # cap on training tokens prepared (large hf sources)
    val_tokens: int | None = None  # validation budget taken first (None: 10M; builtin corpora split by work)
    bos_aligned: bool = False
    bios: dict[str, Any] = field(default_factory=dict)  # data.bios.BiosConfig overrides


@dataclass
class MetricsSection:
    tail_buckets: int = 10
    tail_mode: str = "share"  # share | log
    spectra_every: int | None = None  # None: at every eval; 0: off
    qa_every: int | None = None  # None: at every eval (bios sources only); 0: off
    qa_max_per_group: int = 256
    peak_flops: float | None = None  # override the GPU peak used for perf/mfu
    curvature_every: int = 0  # curvature/<group>/... at spectra evals on step multiples of N; 0: off


@dataclass
class RunSection:
    name: str | None = None  # None: derived from preset, routing and seed
    dir: str | None = None  # None: runs/<name>


@dataclass
class LoggingSection:
    wandb: bool = False
    wandb_project: str = "muonlab"
    wandb_group: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_mode: str | None = None  # None: online with credentials, offline without


@dataclass
class RunConfig:
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


def config_keys_help() -> str:
    """Every config section and key with its default, for `python train.py --help`."""
    lines = []
    for section in dataclasses.fields(RunConfig):
        lines.append(f"  {section.name}:")
        defaults = section.default_factory()
        for f in dataclasses.fields(defaults):
            default = getattr(defaults, f.name)
            lines.append(f"    {section.name}.{f.name}={'null' if default is None else default}")
    return "\n".join(lines)


def config_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds)."""
    return OmegaConf.to_yaml(cfg)


def as_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as nested plain dicts (wandb's config, comparisons)."""
    return dataclasses.asdict(cfg)


def _merge(cfg: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        msg = str(err).splitlines()[0]
        hint = f"valid keys of '{key.rsplit('.', 1)[0]}': {_valid_keys(key)}" if key else ""
        raise ConfigError(f"{msg} {where}. {hint}".strip()) from None


def _valid_keys(full_key: str) -> str:
    node: Any = OmegaConf.structured(RunConfig)
    parts = full_key.split(".")[:-1]
    for part in parts:
        if part not in node:
            break
        node = node[part]
    return ", ".join(node.keys()) if isinstance(node, DictConfig) else "see training/config.py"


# Each choice is defined by the module that implements it.
CHOICES: dict[str, tuple[str, ...]] = {
    "optim.base": BASES,
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
    for key in ("adamw_lr", "muon_lr", "embed_lr", "head_lr", "weight_decay", "eps", "grad_clip",
                "momentum_warmup_steps", "sgd.lr", "signum.lr", "lion.lr", "adam0.lr", "adam0.eps",
                "normuon.lr"):
        value = OmegaConf.select(o, key)
        if value is not None and not value >= 0:
            raise ConfigError(f"optim.{key} must be >= 0, got {value}")
    for key in ("momentum", "sgd_momentum", "signum.momentum", "normuon.beta2", "lion.betas.0",
                "lion.betas.1"):
        value = OmegaConf.select(o, key)
        if not 0 <= value < 1:
            raise ConfigError(f"optim.{key} must be in [0, 1), got {value}")
    routing_rules(o)  # the routing spec's syntax and names (layer ranges and overlaps need the model)
    try:
        schedule_of(cfg)
    except ValueError as err:
        raise ConfigError(f"optim.{err} (train.steps={t.steps})") from None


def schedule_of(cfg: RunConfig | DictConfig) -> Schedule:
    """The run's learning-rate schedule."""
    o = cfg.optim
    return Schedule(cfg.train.steps, o.schedule, o.warmup_steps, o.min_lr_ratio, o.decay_fraction)


def run_name(cfg: RunConfig) -> str:
    """The run's name: `run.name`, or one derived from preset, FFN, routing and seed."""
    if cfg.run.name:
        return cfg.run.name
    ffn = f"_{cfg.model.ffn_type}" if cfg.model.ffn_type else ""
    if cfg.optim.route is not None:  # "vo,ffn:muon default:adamw" -> route-vo+ffn=muon_default=adamw
        rules, _ = routing_rules(cfg.optim)
        routing = "_".join(r.text.replace(",", "+").replace(":", "=") for r in rules)
        return f"{cfg.model.preset}{ffn}_route-{routing}_s{cfg.train.seed}"
    routing = "+".join(spec_tokens(cfg.optim.muon))
    return f"{cfg.model.preset}{ffn}_muon-{routing or 'none'}_s{cfg.train.seed}"


def run_dir(cfg: RunConfig) -> Path:
    """`run.dir`, or runs/<name>-<hash of what the run computes>: distinct configs never share one."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    return Path("runs") / f"{run_name(cfg)}-{config_hash(cfg)}"


def config_hash(cfg: RunConfig) -> str:
    """8 hex digits of the keys that change what a run computes (not logging, run.*, RESUMABLE_KEYS).

    A key of LATER_KEYS counts only when set away from its default, so that the runs from before it
    existed keep their directory (and resume)."""
    defaults = _flatten(as_dict(RunConfig()))
    kept = {k: v for k, v in _flatten(as_dict(cfg)).items()
            if not k.startswith("logging.") and k not in RESUMABLE_KEYS
            and not (k.startswith(LATER_KEYS) and v == defaults.get(k))}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


# Keys (and key prefixes) added after run directories were first named by config_hash.
LATER_KEYS = (
    "optim.route", "optim.ns_coefficients", "optim.orthogonalize", "optim.momentum_order",
    "optim.momentum_warmup_steps", "optim.sgd.", "optim.signum.", "optim.lion.", "optim.adam0.",
    "optim.normuon.", "metrics.curvature_every",
)

# Keys that may change between an interrupted run and its resumption without changing its result.
# `train.steps` is not one of them: the schedule depends on it (extending a run is `train.extend_to`).
RESUMABLE_KEYS = (
    "train.resume", "train.extend_to", "train.micro_batch_size", "train.compile", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.fsdp", "run.dir", "run.name",
)


def resume_conflicts(saved: RunConfig, current: RunConfig) -> list[str]:
    """Dotted keys whose values differ between a saved run config and the current one."""
    a, b = _flatten(as_dict(saved)), _flatten(as_dict(current))
    keys = sorted(set(a) | set(b))
    return [
        k for k in keys
        if a.get(k) != b.get(k) and not k.startswith("logging.") and k not in RESUMABLE_KEYS
    ]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out
