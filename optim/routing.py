"""The router: which optimizer each parameter goes to, by group and layer range (the routing spec).

`optim.route="vo,ffn:muon qk@0-3:signum default:adamw"`, or the same as a YAML mapping
(`{"vo,ffn": muon, "qk@0-3": signum, default: adamw}`) or list (`["vo,ffn:muon", ...]`). Each entry is
`<groups>[@<layers>]:<optimizer>`; `<groups>` are group names and aliases (`optim.groups`), `<layers>`
is `i`, `i-j` (inclusive) or `-k` (the last k layers). `default:<optimizer>` takes every parameter no
entry names (without it: `optim.base`). `optim.muon=X` is shorthand for `X:muon default:<optim.base>`.

Precedence, the one rule: where two entries cover a parameter, the one whose coverage (its groups x its
layers) lies within the other's wins. So a layer-restricted entry overrides an unrestricted one for the
same groups (`ffn:muon ffn@-2:normuon`), a narrower layer range a wider one, and named groups the alias
that contains them (`vo:muon v:signum`). Entries that overlap with neither inside the other (equal
coverage, or partial overlaps such as `qk:muon k,v:lion`) are errors.

`resolve_routing` turns the keys as given (the `optim.muon` shorthand or `optim.route`) into a `Routing`,
the one form everything past the loader reads. `parse_route` reads a spec, `check_rules` checks it
against the model's layer count, `route_rules` assigns every parameter of a model (the routing table of
`optim.groups`, with the entry that won). The optimizer names are the registry's (`optim.registry`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from common.errors import InputWarning
from optim.groups import (
    GROUPS,
    RouteEntry,
    RoutingError,
    group_of,
    layer_of,
    resolve_groups,
    spec_tokens,
)
from optim.registry import orthogonalizing, part_order

_LAYERS = re.compile(r"^(?:(\d+)|(\d+)-(\d+)|-(\d+))$")


@dataclass(frozen=True)
class RouteRule:
    """One entry of a routing spec: the groups (and layers) it covers and their optimizer.

    `layers` is the text after "@" (None: every layer, and the parameters outside layers); `named` the
    groups written out by name (not through an alias), which must exist in the model.
    """

    text: str
    optimizer: str
    groups: frozenset[str] = frozenset()
    named: tuple[str, ...] = ()
    layers: str | None = None
    is_default: bool = False  # the `default:` entry: every parameter no other entry covers

    def layer_range(self, n_layers: int, key: str) -> range | None:
        """The layers this entry covers in a model of `n_layers` (None: all, layer-less parameters too)."""
        if self.layers is None:
            return None
        one, start, stop, last = _LAYERS.match(self.layers).groups()
        if last is not None:
            first, end = n_layers - int(last), n_layers - 1
        else:
            first, end = (int(one), int(one)) if one is not None else (int(start), int(stop))
        if not (0 <= first <= end < n_layers):
            raise RoutingError(f"{key}: entry {self.text!r} covers layers outside 0-{n_layers - 1} "
                               f"(this model has {n_layers} layers)")
        return range(first, end + 1)

    def coverage(self, n_layers: int, key: str) -> frozenset[tuple[str, int | None]]:
        """The (group, layer) pairs this entry covers; layer None stands for the parameters outside layers,
        which only an unrestricted entry covers (so a layer range is always within the unrestricted)."""
        span = self.layer_range(n_layers, key)
        layers = [*range(n_layers), None] if span is None else list(span)
        return frozenset((group, layer) for group in self.groups for layer in layers)


def parse_route(spec: str | Mapping[str, str] | Sequence[str], base: str, key: str = "optim.route"
                ) -> list[RouteRule]:
    """The entries of a routing spec (string, mapping or list), ending with the default entry.

    Checks what needs no model: syntax, optimizer and group names, one default. Layer ranges and
    overlaps need the model's layer count: `check_rules`.
    """
    rules = [_parse_entry(selector, optimizer, key) for selector, optimizer in _entries(spec, key)]
    defaults = [r for r in rules if r.is_default]
    if len(defaults) > 1:
        raise RoutingError(f"{key}: {' and '.join(repr(r.text) for r in defaults)} both set the default; "
                           "keep one")
    if not defaults:
        rules.append(RouteRule(f"default:{base}", base, is_default=True))
    return [r for r in rules if not r.is_default] + [r for r in rules if r.is_default]


def route_rules(model: nn.Module, rules: Sequence[RouteRule], key: str = "optim.route") -> list[RouteEntry]:
    """Assign every trainable parameter of `model` to the optimizer of the entry that covers it.

    Where several entries cover a parameter, the most specific wins (`check_rules`: they are nested).
    Errors (one line, naming `key` and the entry): layers out of range, overlapping entries neither of
    which lies within the other, the scalar group to Muon or NorMuon, a group named explicitly (not
    through an alias) that has no parameter in this model. Warns when the embedding or the head goes to
    Muon (allowed for ablations).
    """
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    layers = [layer_of(name) for name, _ in params]
    n_layers = 1 + max((i for i in layers if i is not None), default=-1)
    check_rules(rules, n_layers, key)
    covers = [(r, r.coverage(n_layers, key)) for r in rules if not r.is_default]
    default = next(r for r in rules if r.is_default)
    entries, used = [], {}
    muon_family = orthogonalizing()
    for (name, p), layer in zip(params, layers, strict=True):
        group = group_of(name, p)
        # the entries covering a parameter are nested (check_rules): the smallest is the most specific
        rule = min(((len(c), r) for r, c in covers if (group, layer) in c), key=lambda pair: pair[0],
                   default=(0, default))[1]
        if group == "scalar" and rule.optimizer in muon_family:
            raise RoutingError(f"the scalar group (1-D norm gains and biases) cannot go to Muon "
                               f"({rule.text!r}); remove it from {key}")
        used.setdefault(rule, set()).add(group)
        entries.append(RouteEntry(name, group, rule.optimizer, tuple(p.shape), p.numel(), rule.text))
    present = {e.group for e in entries}
    missing = sorted({g for r in rules for g in r.named if g not in present})
    if missing:
        raise RoutingError(
            f"{key} names group(s) {', '.join(missing)} but this model has no such parameters "
            f"(present: {', '.join(g for g in GROUPS if g in present)}); remove them from {key}"
        )
    to_muon = sorted({g for r, groups in used.items() if r.optimizer in muon_family for g in groups}
                     & {"embed", "head"})
    if to_muon:
        warnings.warn(
            f"routing {' and '.join(to_muon)} to Muon: Muon is meant for hidden matrices; "
            "allowed for ablations only",
            InputWarning,
            stacklevel=3,
        )
    return entries


def muon_shorthand(spec: str | Sequence[str], base: str) -> list[RouteRule]:
    """`optim.muon=X`: the groups X to Muon, the rest to `base`."""
    tokens = spec_tokens(spec)
    rule = RouteRule(f"{','.join(tokens)}:muon", "muon", resolve_groups(spec, "optim.muon"),
                     tuple(t for t in tokens if t in GROUPS))
    return [rule, RouteRule(f"default:{base}", base, is_default=True)]


def check_rules(rules: Sequence[RouteRule], n_layers: int, key: str = "optim.route") -> None:
    """Layer ranges within the model, and any two overlapping entries nested: one's coverage strictly
    within the other's (it is the more specific and wins). Otherwise an error naming both entries."""
    covers = [(r, r.coverage(n_layers, key)) for r in rules if not r.is_default]
    for i, (a, a_cover) in enumerate(covers):
        for b, b_cover in covers[i + 1:]:
            shared = a_cover & b_cover
            if shared and not (a_cover < b_cover or b_cover < a_cover):
                layers = sorted({layer for _, layer in shared if layer is not None})
                where = f" in layer(s) {_span(layers)}" if a.layers or b.layers else ""
                raise RoutingError(
                    f"{key}: entries {a.text!r} and {b.text!r} both route "
                    f"{', '.join(sorted({g for g, _ in shared}))}{where} and neither is more specific "
                    "(a layer range, or groups named within an alias, overrides the wider entry); "
                    "each parameter needs one optimizer")


def _span(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def _entries(spec: Any, key: str) -> list[tuple[str, str]]:
    """(selector, optimizer) pairs of a spec in any of its forms."""
    if isinstance(spec, Mapping):
        return [(str(k).strip(), str(v).strip()) for k, v in spec.items()]
    if isinstance(spec, str):
        items = re.sub(r"\s*,\s*", ",", spec.strip()).split()  # "vo, ffn:muon" is one entry
    elif isinstance(spec, Sequence) and all(isinstance(item, str) for item in spec):
        items = [re.sub(r"\s*,\s*", ",", item.strip()) for item in spec]
    else:
        raise RoutingError(f"{key} is a string, a mapping or a list of entries, got {spec!r}")
    if not items:
        raise RoutingError(f"{key} is empty; write entries such as \"vo,ffn:muon default:adamw\"")
    pairs = []
    for item in items:
        selector, colon, optimizer = item.rpartition(":")
        if not colon or not selector or not optimizer:
            raise RoutingError(f"{key}: entry {item!r} is not <groups>[@<layers>]:<optimizer> "
                               "(e.g. vo,ffn:muon, qk@0-3:signum, default:adamw)")
        pairs.append((selector, optimizer))
    return pairs


def _parse_entry(selector: str, optimizer: str, key: str) -> RouteRule:
    text = f"{selector}:{optimizer}"
    if optimizer not in part_order():
        raise RoutingError(f"{key}: entry {text!r} names unknown optimizer {optimizer!r}; "
                           f"choose one of {', '.join(part_order())}")
    groups_text, at, layers = selector.partition("@")
    if groups_text == "default":
        if at:
            raise RoutingError(f"{key}: entry {text!r}: the default takes no layers")
        return RouteRule(text, optimizer, is_default=True)
    if at and not _LAYERS.match(layers):
        raise RoutingError(f"{key}: entry {text!r} has layers {layers!r}; write @i, @i-j (inclusive) "
                           "or @-k (the last k layers)")
    groups = resolve_groups(groups_text, key)
    if at and groups <= {"embed", "head"}:
        raise RoutingError(f"{key}: entry {text!r}: {groups_text} is outside the layers; drop @{layers}")
    named = tuple(t for t in spec_tokens(groups_text) if t in GROUPS)
    return RouteRule(text, optimizer, groups, named, layers if at else None)


@dataclass(frozen=True)
class Routing:
    """A config's routing in its one form: route entries ending with the default entry, whichever keys
    the user wrote (`optim.muon=X` is `X:muon default:<optim.base>`), and the key they came from, which
    errors name."""

    rules: tuple[RouteRule, ...]
    key: str

    @property
    def default(self) -> str:
        """The optimizer of every parameter no entry covers."""
        return next(r.optimizer for r in self.rules if r.is_default)

    def used(self) -> set[str]:
        """The optimizers it sends parameters to (an entry naming no group, `optim.muon=none`'s, sends
        none)."""
        return {r.optimizer for r in self.rules if r.groups or r.is_default}

    def label(self) -> str:
        """A short, filesystem-safe name (`routing_label`)."""
        parts = []
        for rule in self.rules:
            if rule.is_default or not rule.groups:
                continue
            selector, _, layers = rule.text.rpartition(":")[0].partition("@")
            groups = "+".join(spec_tokens(selector))
            parts.append(f"{rule.optimizer}-{groups}" + (f"L{layers}" if layers else ""))
        if not parts:
            return self.default
        return ".".join(parts) + ("" if self.default == "adamw" else f"-{self.default}")


def resolve_routing(muon: Any = "hidden", base: str = "adamw", route: Any = None) -> Routing:
    """The routing of `optim.muon`, `optim.base` and `optim.route` as given: the one place the shorthand
    becomes route entries. Both route and muon set (muon away from its default "hidden") is a
    contradiction."""
    if route is None:
        return Routing(tuple(muon_shorthand(muon, base)), "optim.muon")
    if spec_tokens(muon) != ["hidden"]:
        raise RoutingError(f"optim.route and optim.muon={muon!r} both set the routing; keep optim.route "
                           "and write the Muon groups there (<groups>:muon)")
    return Routing(tuple(parse_route(route, base)), "optim.route")


def routing_of(cfg: Any) -> Routing:
    """The routing of the `optim` section `cfg` (a dataclass, a DictConfig or any attribute object)."""
    return resolve_routing(cfg.muon, cfg.base, cfg.route)


def routing_label(muon: Any = "hidden", base: str = "adamw", route: Any = None) -> str:
    """A short, filesystem-safe name for a routing, as grid run names and reports use it.

    Each entry is '<optimizer>-<groups>' ('+'-joined, 'L<layers>' for a layer range), entries are
    joined by '.', and a default other than AdamW is appended ('-sgd'); nothing but the default is
    that optimizer's name. So `optim.muon=vo,ffn` is 'muon-vo+ffn', `optim.muon=none` 'adamw',
    `optim.route="vo,ffn:signum qk@0-1:lion default:sgd"` 'signum-vo+ffn.lion-qkL0-1-sgd'.
    """
    return resolve_routing(muon, base, route).label()


def optimizers_used(muon: Any = "hidden", base: str = "adamw", route: Any = None) -> set[str]:
    """`Routing.used` of these keys' values."""
    return resolve_routing(muon, base, route).used()


def route_config(model: nn.Module, cfg: Any) -> list[RouteEntry]:
    """`route_rules` for the `optim` section `cfg` (what build_optimizer and --dry-run use)."""
    routing = routing_of(cfg)
    return route_rules(model, routing.rules, routing.key)
