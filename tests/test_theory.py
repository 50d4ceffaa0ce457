"""Theory toy models: exact gradients and update rules, and the orderings the papers predict."""

from __future__ import annotations

import json
import math

import pytest
import torch

from theory import assoc_memory as am
from theory import scaling as sc
from theory.threads import single_threaded
from theory.updates import UpdateRule, polar

DT = torch.float64


# --- update rules -------------------------------------------------------------------------------


def test_polar_is_uv_t_of_the_svd() -> None:
    G = torch.randn(6, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    O = polar(G)
    torch.testing.assert_close(O.T @ O, torch.eye(4, dtype=DT))
    # polar(G) = G (G^T G)^{-1/2} for a full-rank G
    evals, evecs = torch.linalg.eigh(G.T @ G)
    torch.testing.assert_close(O, G @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T)


def test_polar_drops_null_directions_of_rank_deficient_gradients() -> None:
    a, b = torch.tensor([1.0, 2.0, 2.0], dtype=DT), torch.tensor([3.0, 4.0], dtype=DT)
    torch.testing.assert_close(polar(torch.outer(a, b)), torch.outer(a / 3, b / 5))
    with pytest.raises(ValueError, match="2-D"):
        polar(torch.ones(3, dtype=DT))


def test_signgd_is_adam_with_zero_betas() -> None:
    G = torch.randn(5, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    adam0 = UpdateRule("adam", lr=0.1, betas=(0.0, 0.0), eps=1e-30)
    sign = UpdateRule("signgd", lr=0.1)
    for scale in (1.0, 1e-3):  # stateless: every step is the sign of the current gradient
        torch.testing.assert_close(adam0.step(scale * G), sign.step(scale * G))


def test_adam_first_step_is_sign_then_uses_its_moments() -> None:
    G = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    adam = UpdateRule("adam", lr=1.0, eps=0.0)
    torch.testing.assert_close(adam.step(G), torch.sign(G))  # bias correction makes step 1 a sign step
    m = 0.9 * 0.1 * G + 0.1 * 2 * G
    v = 0.999 * 0.001 * G**2 + 0.001 * 4 * G**2
    expected = (m / (1 - 0.9**2)) / (v / (1 - 0.999**2)).sqrt()
    torch.testing.assert_close(adam.step(2 * G), expected)


def test_update_rule_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        UpdateRule("sgd", lr=0.1)
    with pytest.raises(ValueError, match="positive"):
        UpdateRule("muon", lr=0.0)


# --- the associative-memory model ---------------------------------------------------------------


def test_hand_written_gradient_matches_autograd() -> None:
    g = torch.Generator().manual_seed(3)
    K = 6
    E_in, E_out = am.make_embeddings("rotated", K, seed=4)
    p = am.class_frequencies(K, power=1.3)
    W = torch.randn(K, K, dtype=DT, generator=g, requires_grad=True)
    loss, grad, S = am.loss_and_grad(W.detach(), E_in, E_out, p)
    ref = -(p * torch.log_softmax(E_out.T @ W @ E_in, dim=0).diagonal()).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, W.grad)
    torch.testing.assert_close(S.sum(0), torch.ones(K, dtype=DT))


def test_class_frequencies() -> None:
    p = am.class_frequencies(4, ratio=10.0)
    torch.testing.assert_close(p, torch.tensor([10, 10, 1, 1], dtype=DT) / 22)
    q = am.class_frequencies(4, power=1.0)
    torch.testing.assert_close(q, torch.tensor([1, 1 / 2, 1 / 3, 1 / 4], dtype=DT) / (25 / 12))
    with pytest.raises(ValueError, match="even"):
        am.class_frequencies(5, ratio=2.0)
    for both in ((2.0, 1.0), (None, None)):
        with pytest.raises(ValueError, match="exactly one"):
            am.class_frequencies(4, ratio=both[0], power=both[1])
    with pytest.raises(ValueError, match=">= 1"):
        am.class_frequencies(4, ratio=0.5)


@pytest.mark.parametrize("kind", am.EMBEDDINGS)
def test_embeddings_are_orthonormal(kind: str) -> None:
    for E in am.make_embeddings(kind, 8, seed=0):
        torch.testing.assert_close(E.T @ E, torch.eye(8, dtype=DT))


def test_overlap_embedding_pairs_head_and_tail_on_shared_coordinates() -> None:
    E, _ = am.make_embeddings("overlap", 6, seed=0)
    for i in range(3):  # head class i and tail class i + 3 live on the same two coordinates
        for k in (i, i + 3):
            assert set(torch.nonzero(E[:, k]).flatten().tolist()) == {i, i + 3}
    with pytest.raises(ValueError, match="unknown embedding 'sparse'"):
        am.make_embeddings("sparse", 6)


def test_train_is_deterministic_and_validates_arguments() -> None:
    p = am.class_frequencies(8, ratio=10.0)
    E_in, E_out = am.make_embeddings("rotated", 8, seed=1)
    a = am.train(E_in, E_out, p, UpdateRule("adam", 0.02), steps=20, eps=0.02)
    b = am.train(E_in, E_out, p, UpdateRule("adam", 0.02), steps=20, eps=0.02)
    assert torch.equal(a.correct, b.correct)
    torch.testing.assert_close(a.correct[0], torch.full((8,), 1 / 8, dtype=DT))  # W0 = 0: uniform
    torch.testing.assert_close(a.loss[0], torch.tensor(math.log(8), dtype=DT))
    assert a.loss[-1] < a.loss[0]
    with pytest.raises(ValueError, match="eps"):
        am.train(E_in, E_out, p, UpdateRule("gd", 1.0), steps=5, eps=1.5)


@pytest.fixture(scope="module")
def grid() -> dict:
    p = am.class_frequencies(16, ratio=100.0)
    return am.run_grid(p, steps=200, eps=0.02, optimizers=("gd", "signgd", "muon"))


def test_muon_is_balanced_for_every_embedding(grid: dict) -> None:
    for emb, r in grid["muon"].items():
        assert r.hit_step is not None, emb
        assert r.worst_class_prob / r.best_class_prob > 0.95, emb


def test_gd_is_imbalanced(grid: dict) -> None:
    for emb, r in grid["gd"].items():
        assert r.hit_step is not None, emb
        assert r.worst_class_prob < 0.2, emb


def test_signgd_balanced_on_identity_but_collapses_with_overlap(grid: dict) -> None:
    ident, over = grid["signgd"]["identity"], grid["signgd"]["overlap"]
    assert ident.worst_class_prob / ident.best_class_prob > 0.99
    assert over.hit_step is not None and over.worst_class_prob < 0.2


def test_gd_and_muon_are_blind_to_orthonormal_embeddings(grid: dict) -> None:
    # Both rules commute with orthogonal changes of basis, so the class curves are identical.
    for opt in ("gd", "muon"):
        for emb in ("rotated", "overlap"):
            torch.testing.assert_close(grid[opt][emb].correct, grid[opt]["identity"].correct)


def test_cli_writes_summary_and_plot(tmp_path) -> None:
    out = tmp_path / "am"
    am.main(["--out", str(out), "--K", "8", "--steps", "30", "--optimizers", "gd,muon", "--lr-muon", "0.1"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"gd", "muon"}
    for by_emb in summary.values():
        assert set(by_emb) == set(am.EMBEDDINGS)
        for s in by_emb.values():
            assert {"worst_class_prob", "best_class_prob", "steps"} <= set(s)
            assert 0 < s["worst_class_prob"] <= s["best_class_prob"] < 1
            assert s["steps"] is None or 0 <= s["steps"] <= 30
            assert not math.isnan(s["worst_class_prob"])
    assert (out / "assoc_memory.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="unknown"):
        am.main(["--out", str(out), "--optimizers", "sgd"])


# --- the scaling model (arXiv 2602.05725) -------------------------------------------------------


def test_key_frequencies_and_targets() -> None:
    p, group = sc.key_frequencies(12, 3, beta=2.0)
    assert group.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=DT))
    torch.testing.assert_close(p[0] / p[-1], torch.tensor(9.0, dtype=DT))
    with pytest.raises(ValueError, match="multiple of M"):
        sc.key_frequencies(10, 3, beta=1.0)
    Y = sc.noisy_targets(5, 0.2)
    torch.testing.assert_close(Y.sum(0), torch.ones(5, dtype=DT))
    torch.testing.assert_close(Y.diagonal(), torch.full((5,), 0.84, dtype=DT))
    with pytest.raises(ValueError, match="alpha"):
        sc.noisy_targets(5, 1.0)


def test_excess_loss_is_exact_for_tiny_and_noisy_losses() -> None:
    Z = torch.randn(6, 6, dtype=DT, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sc.excess_per_key(Z, 0.0), -torch.log_softmax(Z, 0).diagonal())
    big = 50.0 * torch.eye(6, dtype=DT)  # -log_softmax rounds this loss to 0; log1p keeps it
    torch.testing.assert_close(sc.excess_per_key(big, 0.0), torch.full((6,), 5 * math.exp(-50), dtype=DT))
    Y = sc.noisy_targets(6, 0.3)
    kl = torch.nn.functional.kl_div(torch.log_softmax(Z, 0), Y, reduction="none").sum(0)
    torch.testing.assert_close(sc.excess_per_key(Z, 0.3), kl)
    torch.testing.assert_close(sc.excess_per_key(Y.log(), 0.3), torch.zeros(6, dtype=DT))  # optimum


def test_noisy_gradient_matches_autograd() -> None:
    p, _ = sc.key_frequencies(6, 2, beta=1.0)
    Y = sc.noisy_targets(6, 0.1)
    Z = torch.randn(6, 6, dtype=DT, generator=torch.Generator().manual_seed(6), requires_grad=True)
    loss, dZ, _ = am.softmax_ce(Z.detach(), p, Y)
    ref = -(p * (Y * torch.log_softmax(Z, 0)).sum(0)).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(dZ, Z.grad)


@pytest.fixture(scope="module")
def clean() -> sc.ScalingResult:
    return sc.run_dynamics(K=16, M=4, beta=2.0, alpha=0.0, steps=800, lr_muon=0.02)


def test_gd_per_group_loss_decays_as_one_over_p_t(clean: sc.ScalingResult) -> None:
    fit = sc.fit_noiseless(clean)
    final = clean.curves["gd"][-1]
    assert torch.all(final[1:] > final[:-1])  # rarer group, higher loss
    for exponent in fit["gd_exponent"]:
        assert -1.2 < exponent < -0.95
    for level in fit["gd_level"]:  # loss * lr * p_j * t -> (K - 1) / K
        assert level == pytest.approx(15 / 16, rel=0.2)
    assert fit["gd_final_vs_freq_slope"] == pytest.approx(-1.0, abs=0.1)


def test_muon_decays_exponentially_and_uniformly(clean: sc.ScalingResult) -> None:
    fit = sc.fit_noiseless(clean)
    # frequencies span 16x: GD's final losses span about that much, Muon's a small factor
    assert fit["final_spread"]["gd"] > 12.0 and fit["final_spread"]["muon"] < fit["final_spread"]["gd"] / 4
    for rate in fit["muon_rate"]:  # every margin grows by ~lr per step
        assert rate == pytest.approx(0.02, rel=0.05)
    ref = sc.noiseless_reference(clean)["muon"]
    # log(1 + (K - 1) e^{-lr t}) tracks the measured loss within a factor e over 6 orders of magnitude
    assert float(ref[-1].max()) < 1e-5
    assert float((clean.curves["muon"].log() - ref.log()).abs().max()) < 1.0
    assert float(clean.curves["muon"][-1].max()) < 1e-2 * float(clean.curves["gd"][-1].min())


def test_muon_beats_gd_at_every_horizon_under_label_noise() -> None:
    h = sc.horizon_scaling(K=16, beta=2.0, alpha=0.1, horizons=[50, 100, 200])
    for gd, muon in zip(h["gd_excess"], h["muon_excess"], strict=True):
        assert muon < 0.1 * gd
    assert h["gd_exponent"] < 0 and h["muon_exponent"] < 0
    assert h["gd_theory_exponent"] == pytest.approx(-0.5)


@pytest.mark.slow
def test_scaling_cli_writes_summary_and_plots(tmp_path) -> None:
    out = tmp_path / "sc"
    summary = sc.main(["--out", str(out), "--K", "16", "--groups", "4", "--steps", "200", "--Ks", "8,16",
                       "--horizons", "50,100", "--horizon-K", "16"])
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved) == {"settings", "noiseless", "noisy", "by_K", "horizon_scaling"}
    assert [g["group"] for g in saved["noiseless"]["final"]] == [1, 2, 3, 4]
    assert set(saved["by_K"]) == {"8", "16"}
    for name in ("scaling_noiseless", "scaling_noisy", "scaling_by_K", "scaling_horizon"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="integers"):
        sc.main(["--out", str(out), "--Ks", "8,x"])


def test_single_threaded_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), single_threaded():
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_newton_schulz_muon_is_balanced_too() -> None:
    # The training optimizer's quintic Newton-Schulz (not the exact polar factor) on the same problem.
    p = am.class_frequencies(16, ratio=100.0)
    E_in, E_out = am.make_embeddings("overlap", 16)
    r = am.train(E_in, E_out, p, UpdateRule("muon_ns", 0.04), steps=300, eps=0.02)
    assert r.hit_step is not None and r.worst_class_prob / r.best_class_prob > 0.95
