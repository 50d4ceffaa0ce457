"""The GPU path rehearsed on a CPU-only torch, for the bugs a GPU would hit first: a tensor left on the CPU.

Fake CUDA tensors (`FakeTensorMode`) carry a device and a shape but no data, so every op checks that
its inputs share a device exactly as on a GPU, without one. What the rehearsal covers, and what not:
- covered on fake CUDA: the spectra of every hidden matrix and of an update (the singular values and
  their statistics up to the one host read), and a step of every optimizer the router builds, with the
  state each one keeps;
- covered on the meta device (which has the same device checks, but no autocast): the model's forward,
  with and without the fused loss, and its backward;
- not covered: slicing a fake CUDA tensor raises "not linked with support for cuda devices" in torch
  2.13, so the model cannot run on fake CUDA (rope tables, x[:, :-1]), and data-dependent ops (the tail
  accumulator's boolean mask, `.item()`, `bool()`) have no fake equivalent. Those paths run on a real
  GPU in `bash benchmarks/gpu_check.sh`.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from metrics.spectra import grouped_matrices, singular_values, snapshot_weights, spectrum_statistics
from model import Transformer
from model.presets import resolve_model_config
from optim.build import build_optimizer
from training.config import load_config

CUDA = torch.device("cuda")
# Every optimizer of the zoo on some group (scalar params stay on AdamW: Muon never takes 1-D ones).
EVERY_OPTIMIZER = "v,o:muon ffn:normuon q:signum k:lion embed:sgd head:adam0 default:adamw"


def meta_model() -> Transformer:
    with torch.device("meta"):
        return Transformer(resolve_model_config({"preset": "tiny"}, vocab_size=128))


@pytest.fixture
def fake_cuda_model():
    """The tiny model with its parameters on fake CUDA (no memory, no data)."""
    model = meta_model()
    # allow_non_fake_inputs: the meta parameters are converted by to_empty inside the mode
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        model.to_empty(device=CUDA)
        yield model, mode


def test_the_rehearsal_catches_a_tensor_left_on_the_cpu(fake_cuda_model):
    """The bug the spectra had: torch.quantile with its levels made on the CPU."""
    model, _ = fake_cuda_model
    s = singular_values(model.model.layers[0].self_attn.v_proj.weight)
    with pytest.raises(RuntimeError, match="same device"):
        torch.quantile(s.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_spectra_of_weights_and_updates_stay_on_the_device(fake_cuda_model):
    model, _ = fake_cuda_model
    before = snapshot_weights(model)
    matrices = grouped_matrices(model.named_parameters())
    assert {group for _, group, _, _ in matrices} == {"q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out"}
    for name, _, _, W in matrices:
        for matrix in (W, W.detach() - before[name]):  # the weight, and the update update_spectra reads
            stats = spectrum_statistics(singular_values(matrix))
            assert stats.device.type == "cuda" and stats.shape == (5,), name


def test_every_routed_optimizer_steps_on_the_device(fake_cuda_model):
    model, _ = fake_cuda_model
    # (not optim.momentum_warmup_steps: its step counter is a CPU scalar read on the host by design,
    # a data-dependent read that fake tensors cannot make)
    cfg = load_config([], [f"optim.route={EVERY_OPTIMIZER}"])
    optimizer = build_optimizer(model, cfg.optim)
    assert {row.optimizer for row in optimizer.routing} == {
        "muon", "normuon", "signum", "lion", "sgd", "adam0", "adamw"}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    for _ in range(2):  # the first step creates the state, the second reads it
        optimizer.step()
    for p in model.parameters():
        assert p.device.type == "cuda"
    # every per-element state tensor (momenta, moments) on the device; scalar step counts may be CPU
    per_element = [t for state in optimizer.state.values() for t in state.values()
                   if isinstance(t, torch.Tensor) and t.ndim > 0]
    assert per_element and all(t.device.type == "cuda" for t in per_element)


def test_forward_loss_and_backward_on_the_meta_device():
    model = meta_model()
    idx = torch.randint(0, 128, (2, 17), device="meta")
    loss = model(idx[:, :-1], idx[:, 1:])  # the fused head + loss
    loss.backward()
    assert loss.device.type == "meta" and loss.shape == ()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())
    assert model(idx).shape == (2, 17, 128)  # evaluation's logits
