"""A run's identity, decided in one place: its name, label, hash, directory and report setting.

Everything here is a function of a resolved config with the schema defaults applied (`load_config`,
also of a saved config.yaml), so a run directory made before a key existed gets the same answers as
an identical new run:

- `identity_keys`: the dotted keys that change what a run computes; not `logging.*`, not
  RESUMABLE_KEYS (they may change on resume: micro-batch, compile, cadence of logs and checkpoints,
  run.name/dir), and a key of LATER_KEYS only when set away from its default;
- `config_hash`: 8 hex digits of them, the suffix of the run directory's name;
- `setting_key`: the same keys without the seed: the seeds of one setting share it (the report's
  rows, ablations/reading/rows.py);
- `run_name`, `run_label` (the routing label of grid names and reports), `run_dir`, `wandb_names`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optim.groups import spec_tokens
from optim.routing import routing_label, routing_of
from training.config import LATER_KEYS, RESUMABLE_KEYS, RunConfig, as_dict

SEED_KEY = "train.seed"


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A config (as nested dicts) as dotted keys; an empty mapping is a leaf (data.bios: {})."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten_config(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _computes(key: str) -> bool:
    """Whether a key can change what a run computes (logging and the resumable keys cannot)."""
    return not key.startswith("logging.") and key not in RESUMABLE_KEYS


def identity_keys(cfg: RunConfig) -> dict[str, Any]:
    """The dotted keys (and values) that change what the run computes; a key of LATER_KEYS counts only
    when set away from its default, so that the runs from before it existed keep their identity."""
    defaults = flatten_config(as_dict(RunConfig()))
    return {k: v for k, v in flatten_config(as_dict(cfg)).items()
            if _computes(k) and not (k.startswith(LATER_KEYS) and v == defaults.get(k))}


def _digest(keys: dict[str, Any]) -> str:
    return json.dumps(keys, sort_keys=True, default=str)


def config_hash(cfg: RunConfig) -> str:
    """8 hex digits of `identity_keys`: distinct computations never share a run directory."""
    return hashlib.sha256(_digest(identity_keys(cfg)).encode()).hexdigest()[:8]


def setting_key(cfg: RunConfig, drop: Iterable[str] = ()) -> str:
    """`identity_keys` without the seed (and the keys in `drop`): the seeds of one setting share it."""
    ignored = {SEED_KEY, *drop}
    return _digest({k: v for k, v in identity_keys(cfg).items() if k not in ignored})


def resume_conflicts(saved: RunConfig, current: RunConfig) -> list[str]:
    """Dotted keys that change what the run computes and differ between a saved config and this one."""
    a, b = flatten_config(as_dict(saved)), flatten_config(as_dict(current))
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and _computes(k)]


def run_label(cfg: RunConfig) -> str:
    """The routing label of grid run names, reports and the runs listing ('muon-vo+ffn', 'adamw')."""
    return routing_label(cfg.optim.muon, cfg.optim.base, cfg.optim.route)


def _muon_routing(cfg: RunConfig) -> str | None:
    """'vo+ffn' ('none': no group) for a routing given by optim.muon; None for one given by optim.route."""
    if cfg.optim.route is not None:
        return None
    return "+".join(spec_tokens(cfg.optim.muon)) or "none"


def run_name(cfg: RunConfig) -> str:
    """The run's name: `run.name`, or one derived from preset, FFN, routing and seed."""
    if cfg.run.name:
        return cfg.run.name
    ffn = f"_{cfg.model.ffn_type}" if cfg.model.ffn_type else ""
    if (muon := _muon_routing(cfg)) is not None:
        return f"{cfg.model.preset}{ffn}_muon-{muon}_s{cfg.train.seed}"
    # "vo,ffn:muon default:adamw" -> route-vo+ffn=muon_default=adamw
    routing = "_".join(r.text.replace(",", "+").replace(":", "=") for r in routing_of(cfg.optim).rules)
    return f"{cfg.model.preset}{ffn}_route-{routing}_s{cfg.train.seed}"


def run_dir(cfg: RunConfig) -> Path:
    """`run.dir`, or runs/<name>-<config hash>: distinct configs never share one."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    return Path("runs") / f"{run_name(cfg)}-{config_hash(cfg)}"


def wandb_names(cfg: RunConfig, dir_name: str) -> dict[str, Any]:
    """wandb's name (run.name or the run directory's name), group and tags (given, else derived)."""
    ffn = cfg.model.ffn_type or "preset-ffn"
    if (muon := _muon_routing(cfg)) is not None:
        tag, group = f"muon:{muon}", f"muon-{muon}_{cfg.optim.base}"
    else:
        routing = routing_label(route=cfg.optim.route, base=cfg.optim.base)
        tag, group = f"route:{routing}", f"route-{routing}"
    derived_tags = [tag, f"base:{cfg.optim.base}", f"preset:{cfg.model.preset}", f"ffn:{ffn}",
                    f"seed:{cfg.train.seed}"]
    return {
        "name": cfg.run.name or dir_name,
        "group": cfg.logging.wandb_group or f"{cfg.model.preset}_{ffn}_{group}",
        "tags": list(cfg.logging.wandb_tags) or derived_tags,
    }
