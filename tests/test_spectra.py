"""Spectral isotropy metrics on matrices with known spectra, and the per-group/per-layer report."""

import json
import math

import pytest
import torch

from metrics.spectra import METRICS, model_spectra, snapshot_weights, spectral_metrics, update_spectra
from model import ModelConfig, Transformer


def test_identity_is_perfectly_isotropic():
    m = spectral_metrics(torch.eye(16))
    assert m["svd_entropy"] == pytest.approx(1.0)
    assert m["effective_rank"] == pytest.approx(16.0)
    assert m["top10_energy"] == pytest.approx(10 / 16)
    assert m["q75_q25"] == pytest.approx(1.0)


def test_diagonal_by_hand():
    # singular values 2,1,1,1: energies 4,1,1,1 of 7
    m = spectral_metrics(torch.diag(torch.tensor([1.0, 2.0, 1.0, 1.0])))
    h = -(4 / 7 * math.log(4 / 7) + 3 / 7 * math.log(1 / 7))
    assert m["svd_entropy"] == pytest.approx(h / math.log(4))
    assert m["effective_rank"] == pytest.approx(math.exp(h))
    assert m["top10_energy"] == pytest.approx(1.0)
    # sorted 1,1,1,2: 25th percentile 1, 75th at position 2.25 -> 1.25
    assert m["q75_q25"] == pytest.approx(1.25)


def test_rank_one():
    u, v = torch.randn(8, 1), torch.randn(1, 5)
    m = spectral_metrics(u @ v)
    assert m["svd_entropy"] == pytest.approx(0.0, abs=1e-5)
    assert m["effective_rank"] == pytest.approx(1.0, abs=1e-4)
    assert m["top10_energy"] == pytest.approx(1.0)
    assert m["q75_q25"] == math.inf


def test_invariant_to_rotations_and_scale():
    torch.manual_seed(0)
    d = torch.linspace(0.5, 3.0, 12)
    U, _ = torch.linalg.qr(torch.randn(20, 12))
    V, _ = torch.linalg.qr(torch.randn(12, 12))
    rotated = spectral_metrics(7.0 * U @ torch.diag(d) @ V.T)  # a 20x12 matrix with singular values 7d
    assert rotated == pytest.approx(spectral_metrics(torch.diag(d)), rel=1e-4)


def test_bad_matrices_raise():
    with pytest.raises(ValueError, match="2-D"):
        spectral_metrics(torch.ones(3))
    with pytest.raises(ValueError, match="zero"):
        spectral_metrics(torch.zeros(3, 3))


def _tiny(ffn_type="swiglu"):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                                   ffn_hidden=48, ffn_type=ffn_type, max_seq_len=16))


def test_model_spectra_keys_and_means():
    model = _tiny()
    out = model_spectra(model)
    for group in ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out"):
        for metric in METRICS:
            per_layer = [out[f"spectra/{group}/layer{i}/{metric}"] for i in range(2)]
            assert out[f"spectra/{group}/{metric}"] == pytest.approx(sum(per_layer) / 2)
    W = model.model.layers[1].mlp.down_proj.weight
    expected = spectral_metrics(W)["effective_rank"]
    assert out["spectra/ffn_out/layer1/effective_rank"] == pytest.approx(expected)
    assert not any(key.startswith(("spectra/embed", "spectra/head")) for key in out)
    assert not any("ffn_gate" in key for key in model_spectra(_tiny("gelu")))
    assert set(model_spectra(model, groups=("v",))) == {
        f"spectra/v/{suffix}" for suffix in [*METRICS, *(f"layer{i}/{m}" for i in range(2) for m in METRICS)]
    }


def test_update_spectra_sees_only_changed_matrices():
    model = _tiny()
    before = snapshot_weights(model)
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight += torch.outer(torch.randn(32), torch.randn(32))
    out = update_spectra(before, model)
    assert out["spectra_update/v/layer0/effective_rank"] == pytest.approx(1.0, abs=1e-3)
    # unchanged matrices have a zero update: no spectrum, so no key
    assert set(out) == {f"spectra_update/v/{s}" for s in [*METRICS, *(f"layer0/{m}" for m in METRICS)]}
    with pytest.raises(ValueError, match="snapshot"):
        update_spectra({}, model)


def _fake_run(tmp_path, model):
    from safetensors.torch import save_file

    run = tmp_path / "runs" / "demo"
    ckpt = run / "checkpoints" / "step_20"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "loop_state.json").write_text("{}")
    rows = [{"step": s, "spectra/v/svd_entropy": 0.9 + s / 1000, "spectra_update/v/svd_entropy": 0.95,
             "train/loss": 3.0} for s in (10, 20)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run


@pytest.mark.slow
def test_cli_on_a_run_directory(tmp_path):
    from metrics.spectra_report import main

    model = _tiny()
    run = _fake_run(tmp_path, model)
    out = tmp_path / "report"
    assert main([str(run), "--out", str(out)]) == 0
    (entry,) = json.loads((out / "spectra.json").read_text())
    assert entry["label"] == "demo" and entry["step"] == 20
    assert entry["metrics"] == pytest.approx(model_spectra(model), rel=1e-6)
    assert len(entry["singular_values"]["model.layers.0.mlp.up_proj.weight"]) == 32
    for name in ("groups.png", "layers_demo.png", "singular_values_demo.png", "over_steps_demo.png",
                 "update_over_steps_demo.png"):
        assert (out / name).stat().st_size > 1000


def test_cli_rejects_bad_input(tmp_path):
    from metrics.spectra_report import main

    with pytest.raises(FileNotFoundError, match="neither"):
        main([str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--out", str(tmp_path / "o"), "--groups", "q,bogus"])
