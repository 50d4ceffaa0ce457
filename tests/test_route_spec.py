"""optim.routing: the routing grammar (groups, layer ranges, default), its table and its one-line errors."""

import re
import warnings

import pytest

from model import ModelConfig, Transformer
from optim.build import build_optimizer
from optim.config import OptimConfig
from optim.groups import RoutingError, format_routing_table, route
from optim.routing import optimizers_used, parse_route, route_config, routing_label
from training.config import ConfigError, load_config
from training.identity import run_name


def _model(n_layers: int = 4) -> Transformer:
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
                                   ffn_hidden=48, max_seq_len=16))


def _table(spec, **cfg) -> dict[str, str]:
    return {e.name: e.optimizer for e in route_config(_model(), OptimConfig(route=spec, **cfg))}


def test_groups_layers_and_default():
    table = _table("vo,ffn:muon qk@0-1:signum qk@-2:lion default:adamw")
    for i in range(4):
        layer = f"model.layers.{i}."
        assert table[layer + "self_attn.v_proj.weight"] == table[layer + "mlp.down_proj.weight"] == "muon"
        assert table[layer + "self_attn.q_proj.weight"] == ("signum" if i < 2 else "lion")
        assert table[layer + "input_layernorm.weight"] == "adamw"
    outside = ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight")
    assert {table[n] for n in outside} == {"adamw"}


def test_single_layer_negative_range_and_base_as_default():
    table = _table("ffn_out@2:sgd vo@-1:normuon", base="sgd")
    down = {i: table[f"model.layers.{i}.mlp.down_proj.weight"] for i in range(4)}
    assert down == {0: "sgd", 1: "sgd", 2: "sgd", 3: "sgd"}  # default: optim.base
    assert [table[f"model.layers.{i}.self_attn.o_proj.weight"] for i in range(4)] == ["sgd"] * 3 + ["normuon"]


@pytest.mark.parametrize("spec", [
    "vo,ffn:muon qk:signum default:adamw",
    {"vo,ffn": "muon", "qk": "signum", "default": "adamw"},
    ["vo, ffn:muon", "qk:signum", "default:adamw"],
    "vo , ffn:muon  qk:signum default:adamw",
])
def test_string_mapping_and_list_forms_agree(spec):
    assert _table(spec) == _table("vo,ffn:muon qk:signum default:adamw")


def test_muon_shorthand_is_the_same_routing():
    for spec, base in (("vo,ffn", "adamw"), ("hidden", "sgd"), ("none", "adamw")):
        shorthand = {e.name: e.optimizer for e in route(_model(), spec, base)}
        assert shorthand == _table(f"{spec}:muon default:{base}")


def test_build_optimizer_routes_to_every_optimizer():
    model = _model()
    spec = "v:muon o:normuon ffn_in:signum ffn_gate:lion ffn_out:adam0 qk:sgd default:adamw"
    opt = build_optimizer(model, OptimConfig(route=spec))
    assert list(opt.parts) == ["muon", "normuon", "adamw", "sgd", "signum", "lion", "adam0"]
    names = {g["name"] for g in opt.param_groups}
    assert names == {"muon", "normuon", "adamw_embed", "adamw_head", "adamw_scalar", "sgd", "signum", "lion",
                     "adam0"}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_readme_example_the_more_specific_entry_wins():
    """README's flagship example: Muon on the FFNs except the last two layers, which get NorMuon."""
    spec = "vo,ffn:muon qk@0-1:lion ffn@-2:normuon default:adamw"
    entries = route_config(_model(), OptimConfig(route=spec))
    won = {e.name: (e.optimizer, e.entry) for e in entries}
    for i in range(4):
        layer = f"model.layers.{i}."
        for ffn in ("up_proj", "gate_proj", "down_proj"):
            assert won[f"{layer}mlp.{ffn}.weight"] == (
                ("muon", "vo,ffn:muon") if i < 2 else ("normuon", "ffn@-2:normuon"))
        assert won[layer + "self_attn.v_proj.weight"] == ("muon", "vo,ffn:muon")
        assert won[layer + "self_attn.q_proj.weight"] == (
            ("lion", "qk@0-1:lion") if i < 2 else ("adamw", "default:adamw"))
    assert won["model.embed_tokens.weight"] == ("adamw", "default:adamw")
    table = format_routing_table(entries)  # what --dry-run prints: the winning entry per parameter
    assert re.search(r"model.layers.3.mlp.down_proj.weight +ffn_out +normuon +\S+ +[\d,]+ +ffn@-2:normuon$",
                     table, re.MULTILINE)


@pytest.mark.parametrize(("spec", "layer_optimizers"), [
    ("vo:muon v:signum", {"v": ["signum"] * 4, "o": ["muon"] * 4}),  # a named group over its alias
    ("hidden:muon attn@-1:lion", {"v": ["muon"] * 3 + ["lion"], "ffn_out": ["muon"] * 4}),
    ("ffn@0-2:muon ffn_out@2:sgd",
     {"ffn_out": ["muon", "muon", "sgd", "adamw"], "ffn_in": ["muon"] * 3 + ["adamw"]}),
    # nested three deep, written in any order
    ("ffn@1:sgd ffn:muon ffn@0-2:lion", {"ffn_in": ["lion", "sgd", "lion", "muon"]}),
])
def test_more_specific_entry_overrides(spec, layer_optimizers):
    entries = route_config(_model(), OptimConfig(route=spec))
    for group, expected in layer_optimizers.items():
        assert [e.optimizer for e in entries if e.group == group] == expected, group


@pytest.mark.parametrize(("spec", "message"), [
    # equal specificity (neither entry within the other) stays an error
    ("vo:muon v,o:signum", r"optim.route: entries 'vo:muon' and 'v,o:signum' both route o, v and neither is "
                           r"more specific"),
    ("qk:muon k,v:lion", r"entries 'qk:muon' and 'k,v:lion' both route k and neither is more specific"),
    ("ffn@0-2:muon ffn_out@1-3:sgd", r"'ffn@0-2:muon' and 'ffn_out@1-3:sgd' both route ffn_out in layer\(s\) "
                                     r"1-2 and neither"),
    ("ffn_out:sgd ffn@-2:normuon",
     r"'ffn_out:sgd' and 'ffn@-2:normuon' both route ffn_out in layer\(s\) 2-3"),
    ("ffn@-2:muon ffn@2-3:lion", r"'ffn@-2:muon' and 'ffn@2-3:lion' both route ffn_gate, ffn_in, ffn_out in "
                                 r"layer\(s\) 2-3"),
    ("vo@4:muon", r"optim.route: entry 'vo@4:muon' covers layers outside 0-3 \(this model has 4 layers\)"),
    ("vo@-5:muon", r"entry 'vo@-5:muon' covers layers outside 0-3"),
    ("vo@3-1:muon", r"entry 'vo@3-1:muon' covers layers outside"),
    ("vo:adafactor", r"optim.route: entry 'vo:adafactor' names unknown optimizer 'adafactor'; choose one of"),
    ("vo,mlp:muon", r"unknown parameter group 'mlp' in optim.route; valid groups: q"),
    ("vo@x:muon", r"entry 'vo@x:muon' has layers 'x'; write @i, @i-j"),
    ("vo", r"entry 'vo' is not <groups>\[@<layers>\]:<optimizer>"),
    ("default:adamw default:sgd", r"'default:adamw' and 'default:sgd' both set the default"),
    ("embed@0:muon", r"entry 'embed@0:muon': embed is outside the layers"),
    ("hidden,scalar:muon", r"scalar group .* cannot go to Muon \(.hidden,scalar:muon.\); remove it"),
    ("vo:muon default:normuon", r"cannot go to Muon \('default:normuon'\)"),
    ("", r"optim.route is empty"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(RoutingError, match=message) as err:
        route_config(_model(), OptimConfig(route=spec))
    assert "\n" not in str(err.value)


def test_absent_group_and_embed_warning():
    tied = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn_hidden=48,
                                   tie_embeddings=True, max_seq_len=16))
    with pytest.raises(RoutingError, match="optim.route names group.*head but this model has no such"):
        route_config(tied, OptimConfig(route="head:signum"))
    with pytest.warns(UserWarning, match="embed to Muon"):
        route_config(_model(), OptimConfig(route="embed:muon"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        route_config(_model(), OptimConfig(route="embed:signum hidden:muon"))


def test_config_checks_route_and_contradiction_with_muon():
    cfg = load_config(overrides=["optim.route=vo,ffn:signum default:adamw"])
    assert parse_route(cfg.optim.route, "adamw")[0].optimizer == "signum"
    assert run_name(cfg) == "tiny_route-vo+ffn=signum_default=adamw_s0"
    with pytest.raises(RoutingError, match="optim.route and optim.muon='vo' both set the routing"):
        load_config(overrides=["optim.route=vo:signum", "optim.muon=vo"])
    with pytest.raises(RoutingError, match="unknown optimizer 'adam'"):
        load_config(overrides=["optim.route=vo:adam"])
    with pytest.raises(ConfigError, match="optim.signum.momentum must be in"):
        load_config(overrides=["optim.signum.momentum=1.5"])


def test_routing_table_names_every_optimizer():
    entries = route_config(_model(), OptimConfig(route="vo,ffn:signum qk@-1:lion default:adamw"))
    table = format_routing_table(entries)
    assert re.search(r"model.layers.3.self_attn.q_proj.weight +q +lion ", table)
    assert "signum: 20 tensors" in table and "lion: 2 tensors" in table and "adamw:" in table


@pytest.mark.parametrize("muon, base, route, label", [
    ("vo,ffn", "adamw", None, "muon-vo+ffn"),
    ("none", "adamw", None, "adamw"),
    ("hidden", "sgd", None, "muon-hidden-sgd"),
    ("hidden", "adamw", "hidden:muon default:adamw", "muon-hidden"),  # a route equal to the shorthand
    ("hidden", "adamw", "vo,ffn:signum qk@0-1:lion default:sgd", "signum-vo+ffn.lion-qkL0-1-sgd"),
    ("hidden", "adamw", "default:signum", "signum"),
])
def test_routing_labels_name_each_entry(muon, base, route, label):
    assert routing_label(muon, base, route) == label


def test_optimizers_used():
    assert optimizers_used("none") == {"adamw"}
    assert optimizers_used("qk", "sgd") == {"muon", "sgd"}
    assert optimizers_used(route="vo:normuon ffn@-1:lion") == {"normuon", "lion", "adamw"}
