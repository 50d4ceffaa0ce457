"""optim.groups: parameter name -> group, alias resolution, routing and its errors."""

import json
import warnings

import pytest
import torch

from model import ModelConfig, Transformer
from optim.groups import (
    ALIASES,
    GROUPS,
    RoutingError,
    format_routing_table,
    group_of,
    resolve_groups,
    route,
    routing_json,
)


def _model(ffn_type: str = "swiglu", tie: bool = False, qk_norm: bool = False) -> Transformer:
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
                      ffn_type=ffn_type, tie_embeddings=tie, qk_norm=qk_norm, max_seq_len=16)
    return Transformer(cfg)


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.layers.3.self_attn.q_proj.weight", "q"),
        ("model.layers.0.self_attn.k_proj.weight", "k"),
        ("model.layers.0.self_attn.v_proj.weight", "v"),
        ("model.layers.11.self_attn.o_proj.weight", "o"),
        ("model.layers.0.mlp.up_proj.weight", "ffn_in"),
        ("model.layers.0.mlp.gate_proj.weight", "ffn_gate"),
        ("model.layers.0.mlp.down_proj.weight", "ffn_out"),
        ("model.embed_tokens.weight", "embed"),
        ("lm_head.weight", "head"),
        ("model.norm.weight", "scalar"),
        ("model.layers.0.input_layernorm.weight", "scalar"),
        ("model.layers.0.self_attn.q_norm.weight", "scalar"),
        # wrappers' prefixes (DDP, torch.compile) do not change the group
        ("module._orig_mod.model.layers.0.self_attn.v_proj.weight", "v"),
    ],
)
def test_group_of_by_name(name, group):
    assert group_of(name) == group


def test_group_of_uses_param_shape_and_rejects_unknown_matrices():
    assert group_of("some.custom.scale", torch.zeros(8)) == "scalar"
    assert group_of("model.layers.0.mlp.up_proj.bias", torch.zeros(8)) == "scalar"
    with pytest.raises(RoutingError, match="cannot tell the group of parameter 'encoder.proj.weight'"):
        group_of("encoder.proj.weight", torch.zeros(4, 4))
    with pytest.raises(RoutingError):
        group_of("model.layers.0.self_attn.q_proj.weight_extra")


def test_every_model_parameter_has_a_group():
    for name, p in _model(qk_norm=True).named_parameters():
        assert group_of(name, p) in GROUPS


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("qk", {"q", "k"}),
        ("vo", {"v", "o"}),
        ("attn", {"q", "k", "v", "o"}),
        ("ffn", {"ffn_in", "ffn_gate", "ffn_out"}),
        ("hidden", {"q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out"}),
        ("all", set(GROUPS) - {"scalar"}),
        ("none", set()),
        ("", set()),
        (" vo , ffn_out ", {"v", "o", "ffn_out"}),
        (["vo", "ffn_in"], {"v", "o", "ffn_in"}),
        (["q, k", " o"], {"q", "k", "o"}),
    ],
)
def test_resolve_groups(spec, expected):
    assert resolve_groups(spec) == frozenset(expected)


def test_resolve_groups_unknown_lists_valid_names():
    with pytest.raises(RoutingError) as err:
        resolve_groups("vo,mlp")
    message = str(err.value)
    assert "'mlp'" in message
    assert all(name in message for name in (*GROUPS, *ALIASES))


def _by_group(entries) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in entries:
        out.setdefault(e.group, set()).add(e.optimizer)
    return out


def test_route_vo_ffn():
    entries = route(_model(), "vo,ffn")
    assert _by_group(entries) == {
        "q": {"adamw"}, "k": {"adamw"}, "v": {"muon"}, "o": {"muon"},
        "ffn_in": {"muon"}, "ffn_gate": {"muon"}, "ffn_out": {"muon"},
        "embed": {"adamw"}, "head": {"adamw"}, "scalar": {"adamw"},
    }
    model = _model()
    assert [e.name for e in entries] == [n for n, _ in model.named_parameters()]
    assert sum(e.numel for e in entries) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("spec", [*GROUPS[:-1], *ALIASES])
def test_route_every_group_and_alias(spec):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = route(model, spec, base="sgd")
    wanted = resolve_groups(spec)
    for e in entries:
        assert e.optimizer == ("muon" if e.group in wanted else "sgd"), e


def test_route_errors():
    with pytest.raises(RoutingError, match="scalar group.*cannot go to Muon"):
        route(_model(), "hidden,scalar")
    with pytest.raises(RoutingError, match=r"names group\(s\) ffn_gate but this model has no such param"):
        route(_model(ffn_type="gelu"), "vo,ffn_gate")
    with pytest.raises(RoutingError, match="head"):
        route(_model(tie=True), "head")
    with pytest.raises(RoutingError, match="unknown parameter group 'fnn'"):
        route(_model(), "fnn")


def test_aliases_do_not_fail_on_absent_groups():
    # ffn / hidden / all include ffn_gate and head, absent from a non-gated, tied model: not an error.
    entries = route(_model(ffn_type="relu2", tie=True), "ffn")
    assert _by_group(entries)["ffn_in"] == {"muon"} and "ffn_gate" not in _by_group(entries)
    with pytest.warns(UserWarning, match="embed to Muon"):
        route(_model(ffn_type="gelu", tie=True), "all")


def test_route_warns_for_embed_and_head():
    with pytest.warns(UserWarning, match="embed and head to Muon"):
        route(_model(), "hidden,embed,head")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        route(_model(), "hidden")


def test_routing_json_and_table():
    entries = route(_model(), "vo")
    rows = routing_json(entries)
    assert json.loads(json.dumps(rows)) == rows
    assert rows[1] == {"name": "model.layers.0.self_attn.q_proj.weight", "group": "q", "optimizer": "adamw",
                       "shape": [32, 32], "numel": 1024}
    table = format_routing_table(entries)
    assert "model.layers.1.self_attn.v_proj.weight" in table and "16x32" in table
    muon_numel = sum(e.numel for e in entries if e.optimizer == "muon")
    assert f"muon: 4 tensors, {muon_numel:,} parameters" in table
    assert "adamw:" in table
