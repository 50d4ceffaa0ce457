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
from omegaconf import DictConfig
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from model import Transformer
from training.config import ConfigError


def fsdp_requested(cfg: DictConfig) -> bool:
    """Whether FSDP2 is asked for: `train.fsdp=true`, or `accelerate launch --use_fsdp --fsdp_version 2`."""
    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if launched and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError("train.py shards with FSDP2 only: add --fsdp_version 2 to accelerate launch "
                          "--use_fsdp (or launch without --use_fsdp and set train.fsdp=true)")
    return bool(cfg.train.fsdp) or launched


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


def main_copy(model: nn.Module, accelerator: Accelerator) -> nn.Module | None:
    """A whole copy of the (not yet sharded) `model` on the main process, None on the others.

    Spectra and QA run on the main process alone; on the sharded model they would need every rank.
    `copy_full_weights` refreshes the copy before each evaluation.
    """
    if not accelerator.is_main_process:
        return None
    return autocast_forward(copy.deepcopy(model).to(accelerator.device).requires_grad_(False), accelerator)


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
