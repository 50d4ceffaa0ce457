"""The optimizer registry: every optimizer name the code knows comes from its table."""

import dataclasses

import pytest
import torch

from common.errors import UserError
from model import ModelConfig, Transformer
from optim.build import build_optimizer, parameter_rates
from optim.config import OptimConfig
from optim.registry import (
    SPECS,
    OptimizerSpec,
    bases,
    checked_keys,
    is_rate_key,
    keys_acting_on,
    optimizer_lr,
    orthogonalizing,
    part_order,
    registered,
    spec_of,
)
from optim.routing import optimizers_used, parse_route, resolve_routing, routing_label, routing_of
from training.config import LATER_KEYS, config_yaml, load_config
from training.identity import config_hash, run_name


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   ffn_hidden=64, max_seq_len=16))


def test_the_names_everywhere_come_from_the_table():
    # the order of before the registry (the parts, config.yaml's sections); an optimizer added comes after
    assert part_order()[:7] == ("muon", "normuon", "adamw", "sgd", "signum", "lion", "adam0")
    assert set(part_order()) == set(SPECS)
    assert orthogonalizing()[:2] == ("muon", "normuon") and bases()[:2] == ("adamw", "sgd")
    sections = [f.name for f in dataclasses.fields(OptimConfig) if dataclasses.is_dataclass(f.type)]
    assert sections == [name for name, spec in SPECS.items() if spec.section is not None]
    assert sections[:5] == ["sgd", "signum", "lion", "adam0", "normuon"]
    assert all(f"optim.{name}." in LATER_KEYS for name in sections)
    nonnegative, fractions = checked_keys()
    assert {f"{name}.lr" for name in sections} <= set(nonnegative) and "lion.betas.1" in fractions
    for name in SPECS:  # the route grammar takes every name of the table
        assert parse_route(f"vo:{name}", "adamw")[0].optimizer == name


def test_an_optimizer_section_is_documented_by_its_dataclass():
    doc = OptimConfig.__doc__
    assert "    lion: Lion (Chen et al. 2023)\n" in doc and "    grad_clip: " in doc


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.route=vo:adafactor"], "optim.route: entry 'vo:adafactor' names unknown optimizer 'adafactor'"),
    (["optim.adafactor.lr=0.1"], "unknown key 'optim.adafactor'"),
    (["optim.base=lion"], "optim.base=lion is not one of adamw, sgd"),
    (["optim.lion.lr=-1"], "optim.lion.lr must be >= 0, got -1"),
    (["optim.normuon.beta2=1.0"], "optim.normuon.beta2 must be in [0, 1), got 1.0"),
])
def test_an_unknown_optimizer_or_a_bad_setting_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(UserError) as err:
        load_config([], overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_name_never_falls_through_to_an_optimizer():
    with pytest.raises(UserError, match="optim.route: unknown optimizer 'adafactor'; choose one of muon, "):
        spec_of("adafactor")
    with pytest.raises(UserError, match="unknown optimizer 'adafactor'"):
        optimizer_lr("adafactor", OptimConfig())


def test_a_registered_toy_optimizer_is_routed_built_labelled_and_tuned():
    toy = OptimizerSpec("toy", lambda groups, lr, cfg: torch.optim.SGD(groups, lr=lr),
                        lambda cfg: 0.5 * cfg.adamw_lr, keys=("nesterov",))
    with registered(toy):
        assert "toy" in part_order()
        cfg = OptimConfig(route="vo:toy default:adamw", adamw_lr=0.01)
        opt = build_optimizer(_model(), cfg)
        assert isinstance(opt.parts["toy"], torch.optim.SGD) and list(opt.parts) == ["adamw", "toy"]
        assert {g["name"]: g["lr"] for g in opt.param_groups}["toy"] == 0.005
        assert routing_label(route="vo:toy") == "toy-vo"
        assert optimizers_used(route="vo:toy") == {"toy", "adamw"}
        assert keys_acting_on({"toy"})("optim.nesterov") and not keys_acting_on({"adamw"})("optim.nesterov")
    with pytest.raises(UserError, match="names unknown optimizer 'toy'"):
        parse_route("vo:toy", "adamw")


def test_registering_a_section_without_an_lr_or_a_name_twice_is_refused():
    @dataclasses.dataclass
    class NoLr:
        beta: float = 0.9

    with pytest.raises(TypeError, match="needs an lr field"):
        OptimizerSpec("nolr", lambda g, lr, cfg: None, lambda cfg: 1.0, NoLr)
    with pytest.raises(ValueError, match="already registered"), registered(SPECS["lion"]):
        pass


def test_an_optimizers_own_keys_act_only_where_it_is_used():
    adamw_only, with_sgd = keys_acting_on({"adamw"}), keys_acting_on({"muon", "sgd"})
    assert not adamw_only("optim.muon_lr") and with_sgd("optim.muon_lr")
    assert keys_acting_on({"normuon", "adamw"})("optim.muon_lr")
    assert not adamw_only("optim.sgd.lr") and with_sgd("optim.sgd.lr") and with_sgd("optim.sgd_momentum")
    assert not with_sgd("optim.lion.betas") and not with_sgd("optim.betas")
    for acts in (adamw_only, with_sgd):  # the keys every optimizer reads, and the rest of the config
        assert acts("optim.adamw_lr") and acts("optim.weight_decay") and acts("train.steps")


def test_the_muon_shorthand_resolves_to_route_entries():
    shorthand, route = resolve_routing("vo,ffn", "sgd"), resolve_routing(route="vo,ffn:muon default:sgd")
    assert [r.text for r in shorthand.rules] == ["vo,ffn:muon", "default:sgd"]
    assert (shorthand.key, route.key) == ("optim.muon", "optim.route")
    assert shorthand.used() == route.used() and shorthand.label() == route.label() == "muon-vo+ffn-sgd"
    assert [(r.optimizer, r.groups, r.layers) for r in shorthand.rules] == [
        (r.optimizer, r.groups, r.layers) for r in route.rules]
    assert routing_of(OptimConfig(muon="vo,ffn", base="sgd")) == shorthand
    with pytest.raises(UserError, match="optim.route and optim.muon='vo' both set the routing"):
        resolve_routing("vo", "adamw", "qk:lion")


@pytest.mark.parametrize(("overrides", "digest", "name"), [
    # computed before the registry: resolving the routing leaves the user's keys, hence the hash
    ([], "5ea1bb06", "tiny_swiglu_muon-hidden_s0"),
    (["optim.muon=vo,ffn"], "3f39ac5a", "tiny_swiglu_muon-vo+ffn_s0"),
    (["optim.base=sgd"], "93d37eb6", "tiny_swiglu_muon-hidden_s0"),
    (["optim.route=hidden:lion default:adamw"], "7120ab31", "tiny_swiglu_route-hidden=lion_default=adamw_s0"),
    (["optim.route=vo:signum qk@0-1:adam0 ffn:normuon default:sgd", "optim.lion.betas=[0.9,0.98]"],
     "0609f1f3", "tiny_swiglu_route-vo=signum_qk@0-1=adam0_ffn=normuon_default=sgd_s0"),
])
def test_run_identity_is_unchanged_by_the_registry(overrides, digest, name):
    cfg = load_config(["configs/smoke.yaml"], overrides)
    assert (config_hash(cfg), run_name(cfg)) == (digest, name)


def test_the_saved_config_keeps_the_keys_as_given():
    saved = config_yaml(load_config(["configs/smoke.yaml"], ["optim.muon=vo,ffn"]))
    assert "  muon: vo,ffn\n  route: null\n" in saved


@pytest.mark.parametrize("route", ["optim.muon=hidden", "optim.route=vo:signum qk:normuon"])
def test_parameter_rates_are_the_built_optimizers_and_resolve_the_ties(route):
    """parameter_rates gives each parameter the lr of its group in the built optimizer; a tied rate set to
    the value it ties to (muon_lr = adamw_lr, signum.lr = 0.2 x adamw_lr, embed_lr = its optimizer's)
    gives the same rates, which is what lets a sweep skip a point it has already run."""
    model = _model()
    tied = load_config(overrides=[route, "optim.adamw_lr=0.01"]).optim
    built = build_optimizer(model, tied)
    lrs = {id(p): g["lr"] for part in built.parts.values() for g in part.param_groups for p in g["params"]}
    rates = parameter_rates(model, tied)
    assert {name: lrs[id(p)] for name, p in model.named_parameters()} == {n: r[1] for n, r in rates.items()}
    embed = "model.embed_tokens.weight"
    assert rates[embed][1] == 0.01 and {opt for opt, _ in rates.values()} == built.parts.keys()
    spelled_out = ["optim.muon_lr=0.01", "optim.embed_lr=0.01", "optim.head_lr=0.01", "optim.signum.lr=0.002"]
    spelled = load_config(overrides=[route, "optim.adamw_lr=0.01", *spelled_out]).optim
    assert parameter_rates(model, spelled) == rates
    other = load_config(overrides=[route, "optim.adamw_lr=0.01", "optim.embed_lr=0.03"]).optim
    assert parameter_rates(model, other)[embed] == ("adamw", 0.03) != rates[embed]


def test_rate_keys_are_the_learning_rates_of_the_table():
    assert all(is_rate_key(k) for k in ("optim.adamw_lr", "optim.muon_lr", "optim.embed_lr", "optim.head_lr",
                                        "optim.signum.lr", "optim.normuon.lr"))
    assert not any(is_rate_key(k) for k in ("optim.momentum", "optim.signum.momentum", "optim.weight_decay",
                                            "train.lr", "optim.adafactor.lr", "adamw_lr"))
