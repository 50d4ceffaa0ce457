"""FSDP2 in train.py: whether it is on, how the model is sharded, and the main process's whole copy.

train.py shards the model with torch's `fully_shard` itself instead of `accelerator.prepare`:
accelerate turns FSDP on only for GPU processes (CPU processes stay MULTI_CPU), its FSDP2 `prepare`
wants the optimizer in the same call, and its checkpoints have their own format. Sharding here runs
the same code on CPU processes (gloo, the tests) and GPUs, the optimizer is built afterwards on the
sharded (DTensor) parameters, and checkpoints keep the format of a 1-process or DDP run
(`training.checkpoint`), so they resume in any mode and on any number of processes.
"""

from __future__ import annotations

import copy
import os

import torch
from accelerate import Accelerator
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from model import Transformer
from training.config import ConfigError


def fsdp_requested(fsdp: bool) -> bool:
    """Whether FSDP2 is asked for: `train.fsdp=true`, or `accelerate launch --use_fsdp --fsdp_version 2`."""
    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if launched and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError("train.py shards with FSDP2 only: add --fsdp_version 2 to accelerate launch "
                          "--use_fsdp (or launch without --use_fsdp and set train.fsdp=true)")
    return fsdp or launched


def shard_model(model: Transformer, device: torch.device, world_size: int) -> Transformer:
    """`model` on `device`, each decoder layer one FSDP2 unit and the rest (embedding, final norm, head)
    the root's, which stays gathered through the whole forward: the fused loss and a tied head read
    the head's weight directly, outside its module."""
    mesh = init_device_mesh(device.type, (world_size,))
    model.to(device)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def autocast_forward(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """`model` with its forward under the accelerator's autocast (bf16), as `prepare` does for DDP."""
    if accelerator.native_amp:
        model.forward = accelerator.autocast()(model.forward)
    return model


class WholeModel:
    """The whole, unwrapped model that spectra and QA read on the main process (`module`; None on the
    other processes of an FSDP2 run).

    Without FSDP2 it is the training model itself. Under FSDP2 it is a copy made before sharding, and
    `refresh()` gathers the sharded weights into it: a collective that every rank calls, in order.
    """

    def __init__(self, module: nn.Module | None, sharded: FSDPModule | None = None) -> None:
        self.module, self.sharded = module, sharded

    @classmethod
    def copy_for(cls, model: nn.Module, accelerator: Accelerator) -> WholeModel:
        """A whole copy of the (not yet sharded) `model` on the main process, to be refreshed from
        `sharded` once that is set."""
        module = None
        if accelerator.is_main_process:
            module = copy.deepcopy(model).to(accelerator.device).requires_grad_(False)
            module = autocast_forward(module, accelerator)
        return cls(module)

    def refresh(self) -> None:
        """Copy the sharded model's current weights into the whole copy (no-op without FSDP2)."""
        if self.sharded is not None:
            copy_full_weights(self.sharded, self.module)


@torch.no_grad()
def copy_full_weights(sharded: FSDPModule, copy_on_main: nn.Module | None) -> None:
    """Gather every parameter of `sharded` whole into `copy_on_main` (None off the main process).

    A collective: every rank must call it, in the same order.
    """
    # The root unit is not resharded after a forward without backward (an eval): its parameters
    # would be plain gathered tensors, not DTensors.
    sharded.reshard()
    targets = dict(copy_on_main.named_parameters()) if copy_on_main is not None else {}
    for name, param in sharded.named_parameters():
        full = param.full_tensor()
        if copy_on_main is not None:
            targets[name].copy_(full)
