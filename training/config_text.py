"""How the config speaks to people: each key's one-line description and YAML-style default (`--help`)
and the fully resolved config (`--print-config`).

The descriptions live in the schema: the "Keys:" section of each config dataclass's docstring, one
`name: text` line per field (tests check that every key has one).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Iterator
from typing import Any

from omegaconf import OmegaConf

from model.presets import resolve_model_config
from training.config import RunConfig, schema_leaves
from training.identity import run_dir, run_name

_KEY_LINE = re.compile(r"^\s+(\w+): (.+)$")


def key_docs(cls: type) -> dict[str, str]:
    """{field: one-line description} from the "Keys:" section of a config dataclass's docstring."""
    _, _, keys = (inspect.getdoc(cls) or "").partition("Keys:\n")
    return {m[1]: m[2] for line in keys.splitlines() if (m := _KEY_LINE.match(line))}


def schema_keys() -> Iterator[tuple[str, Any, str]]:
    """(dotted key, default, description) of every leaf key of the schema, in schema order."""
    for key, owner, name in schema_leaves():
        yield key, getattr(owner(), name), key_docs(owner).get(name, "")


def yaml_value(value: Any) -> str:
    """A default as YAML writes it: null, true, [0.9, 0.95], {}, plain strings."""
    return value if isinstance(value, str) else json.dumps(value)


def config_keys_help() -> str:
    """Every config key with its default and description, one line each, by section (`train.py --help`)."""
    rows = list(schema_keys())
    width = min(max(len(f"{key}={yaml_value(default)}") for key, default, _ in rows), 44)
    lines, section = [], None
    for key, default, doc in rows:
        if key.split(".")[0] != section:
            section = key.split(".")[0]
            lines.append(f"  {section}: {key_docs(RunConfig)[section]}")
        lines.append(f"    {f'{key}={yaml_value(default)}':<{width}}  {doc}")
    return "\n".join(lines)


def resolved_config_yaml(cfg: RunConfig) -> str:
    """The config as the run will use it: the preset's model fields filled in, run.name and run.dir
    resolved. For reading only: config.yaml keeps the config as given, so that its hash is unchanged."""
    resolved = dataclasses.asdict(cfg)
    model = dataclasses.asdict(resolve_model_config(resolved["model"]))
    if resolved["model"]["vocab_size"] is None:
        model["vocab_size"] = None  # the tokenizer's, known once the data is prepared
    resolved["model"] |= model
    resolved["run"] = {"name": run_name(cfg), "dir": str(run_dir(cfg))}
    note = ("# resolved: model.* filled in from model.preset (vocab_size null: the tokenizer's, padded to a "
            "multiple of 64), run.name and run.dir derived\n")
    return note + OmegaConf.to_yaml(OmegaConf.create(resolved))
