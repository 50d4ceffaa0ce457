"""Parameter groups of the transformer, their aliases, and the routing table.

Names follow transformers' Llama (`model.layers.{i}.self_attn.q_proj.weight`, ...). `route` is the
`optim.muon` shorthand: it names the groups that go to Muon, e.g. "vo,ffn" or ["v", "o", "ffn_in"];
everything else goes to the base optimizer (AdamW, or SGD). The general router (any optimizer per group
and layer range) is `optim.routing`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from common.errors import UserError
from common.text_table import text_table

GROUPS = ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out", "embed", "head", "scalar")
ALIASES: dict[str, tuple[str, ...]] = {
    "qk": ("q", "k"),
    "vo": ("v", "o"),
    "attn": ("q", "k", "v", "o"),
    "ffn": ("ffn_in", "ffn_gate", "ffn_out"),
    "hidden": ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out"),
    "all": ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out", "embed", "head"),
    "none": (),
}
# Matched against the end of the name, so wrappers' prefixes (DDP's "module.", compile's "_orig_mod.") pass.
_NAME_PATTERNS = (
    ("q", r"self_attn\.q_proj\.weight"),
    ("k", r"self_attn\.k_proj\.weight"),
    ("v", r"self_attn\.v_proj\.weight"),
    ("o", r"self_attn\.o_proj\.weight"),
    ("ffn_in", r"mlp\.up_proj\.weight"),
    ("ffn_gate", r"mlp\.gate_proj\.weight"),
    ("ffn_out", r"mlp\.down_proj\.weight"),
    ("embed", r"embed_tokens\.weight"),
    ("head", r"lm_head\.weight"),
    ("scalar", r"\w*norm\.weight|bias"),
)
_MATCHERS = [(group, re.compile(rf"(^|\.)(?:{pattern})$")) for group, pattern in _NAME_PATTERNS]
_LAYER = re.compile(r"layers\.(\d+)\.")


class RoutingError(UserError):
    """A routing spec or a parameter name the router cannot handle."""


@dataclass(frozen=True)
class RouteEntry:
    """Where one parameter goes: its group, its optimizer (`optim.registry`), shape, size and
    the routing entry that sent it there (the one that won, where several cover it)."""

    name: str
    group: str
    optimizer: str
    shape: tuple[int, ...]
    numel: int
    entry: str = ""


def _valid_names() -> str:
    return f"groups: {', '.join(GROUPS)}; aliases: {', '.join(ALIASES)}"


def group_of(name: str, param: Tensor | None = None) -> str:
    """The group of a parameter, by its (Llama-style) name; any 1-D (or 0-D) parameter is "scalar"."""
    if param is not None and param.ndim <= 1:
        return "scalar"
    for group, matcher in _MATCHERS:
        if matcher.search(name):
            return group
    raise RoutingError(
        f"cannot tell the group of parameter {name!r}: expected a Llama-style name ending in "
        "self_attn.{q,k,v,o}_proj.weight, mlp.{up,gate,down}_proj.weight, embed_tokens.weight, "
        "lm_head.weight, or a norm weight/bias"
    )


def layer_of(name: str) -> int | None:
    """Layer index in a Llama-style parameter name (``...layers.3.mlp...`` -> 3), None outside layers."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def spec_tokens(spec: str | Sequence[str]) -> list[str]:
    """The names of a routing spec, as written: "vo, ffn" or ["vo", "ffn"] -> ["vo", "ffn"]."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(part, str) for part in parts):
        raise RoutingError(f"a routing spec is a comma string or a list of names, got {spec!r}")
    return [tok.strip() for part in parts for tok in part.split(",") if tok.strip()]


def resolve_groups(spec: str | Sequence[str], key: str = "optim.muon") -> frozenset[str]:
    """Expand a routing spec ("vo, ffn", ["qk"], "none") into the set of group names it covers."""
    groups: set[str] = set()
    for tok in spec_tokens(spec):
        if tok in ALIASES:
            groups.update(ALIASES[tok])
        elif tok in GROUPS:
            groups.add(tok)
        else:
            raise RoutingError(f"unknown parameter group {tok!r} in {key}; valid {_valid_names()}")
    return frozenset(groups)


def route(model: nn.Module, spec: str | Sequence[str], base: str = "adamw") -> list[RouteEntry]:
    """Assign every parameter of `model` to "muon" (its group is in `spec`) or to `base` (`optim.muon`).

    Errors: an unknown name, `scalar` to Muon, a group named explicitly (not through an alias)
    that has no parameter in this model (e.g. ffn_gate with a non-gated FFN). Warns when the
    embedding or the head goes to Muon (allowed for ablations).
    """
    from optim.routing import muon_shorthand, route_rules  # the router builds on this module

    return route_rules(model, muon_shorthand(spec, base), key="optim.muon")


def routing_json(entries: Sequence[RouteEntry]) -> list[dict]:
    """The routing as JSON-ready dicts (routing.json): name, group, optimizer, shape (list), numel."""
    return [
        {"name": e.name, "group": e.group, "optimizer": e.optimizer, "shape": list(e.shape), "numel": e.numel}
        for e in entries
    ]


def format_routing_table(entries: Sequence[RouteEntry]) -> str:
    """A plain-text table (parameter, group, optimizer, shape, count, the routing entry that won) followed
    by totals per optimizer."""
    rows = [("parameter", "group", "optimizer", "shape", "count", "entry")]
    rows += [(e.name, e.group, e.optimizer, "x".join(map(str, e.shape)), f"{e.numel:,}", e.entry)
             for e in entries]
    lines = text_table(rows, right={4})  # the count right-aligned
    total = sum(e.numel for e in entries) or 1
    lines.append("")
    for optimizer in dict.fromkeys(e.optimizer for e in entries):
        mine = [e for e in entries if e.optimizer == optimizer]
        count = sum(e.numel for e in mine)
        groups = ", ".join(dict.fromkeys(e.group for e in mine))
        share = 100 * count / total
        lines.append(f"{optimizer}: {len(mine)} tensors, {count:,} parameters ({share:.1f}%) — {groups}")
    return "\n".join(lines)
