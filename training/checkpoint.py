"""Atomic checkpoints: `checkpoints/step_<N>/` written through accelerate, then renamed into place.

A checkpoint holds what `accelerator.save_state` writes (model weights as model.safetensors, RNG
states of every process, registered objects such as the optimizer and the loop state). It is
written to `.tmp_step_<N>` and renamed only once complete, so a directory named `step_<N>` is
always whole. Its marker, loop_state.json, records every file's size and sha256, which resume
verifies (`checkpoint_problem`); older checkpoints are removed once `keep` newer ones verify.

Under FSDP2 the same files hold the same whole tensors: the sharded model's weights are gathered
into model.safetensors (`checkpoint_whole_weights`) and the optimizer's sharded state is gathered
too (`WholeOptimizerState`), so a checkpoint resumes in any mode (1 process, DDP, FSDP2) and on any
number of processes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import SAFE_WEIGHTS_NAME, save
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from common.checksums import files_problem, record_files
from common.errors import MissingFileError, UserError
from common.files import write_error, write_json
from common.rundir import CHECKPOINT_MARKER, WEIGHTS_FILE, RunDir, is_complete_checkpoint, locate
from model.presets import resolve_model_config
from model.transformer import Transformer

FILES_KEY = "files"  # the marker's record of every file of the checkpoint: {name: {"bytes", "sha256"}}


def save_checkpoint(accelerator: Accelerator, run: RunDir, step: int, loop_state: dict, keep: int) -> Path:
    """Save the full training state at `step`; every process must call this."""
    final = run.checkpoint(step)
    tmp = temporary_checkpoint(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # The marker is written last: its presence is what makes a checkpoint complete.
        write_json(tmp / CHECKPOINT_MARKER, {**loop_state, FILES_KEY: record_files(tmp)})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        prune_checkpoints(run, keep)
    accelerator.wait_for_everyone()
    return final


def temporary_checkpoint(final: Path) -> Path:
    """Where the checkpoint that becomes `final` is written (renamed into place once complete)."""
    return final.with_name(f".tmp_{final.name}")


@contextmanager
def checkpoint_write_errors(final: Path) -> Iterator[None]:
    """A failed checkpoint write (full disk, quota, I/O error) becomes one WriteError line naming `final`.

    torch.save and safetensors report a full disk as RuntimeError / SafetensorError, not OSError. The
    half-written temporary directory is removed (it holds the space); the checkpoints before it were
    never touched.
    """
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        shutil.rmtree(temporary_checkpoint(final), ignore_errors=True)
        raise write_error(final, err) from err


def checkpoint_problem(ckpt: Path, *, hash_bytes: bool = True) -> str | None:
    """What is wrong with a complete checkpoint's files against its marker, or None if they match.

    A checkpoint written before checksums were recorded has nothing to check: accepted, unverified.
    hash_bytes=False compares presence and sizes only.
    """
    try:
        records = json.loads((Path(ckpt) / CHECKPOINT_MARKER).read_text()).get(FILES_KEY, {})
    except (OSError, ValueError) as err:
        return f"{CHECKPOINT_MARKER} is unreadable ({err})"
    return files_problem(ckpt, records, hash_bytes=hash_bytes)


def prune_checkpoints(run: RunDir, keep: int) -> None:
    """The keep-last-N rule: delete a checkpoint only once `keep` newer ones pass verification.

    Sizes are checked (a stat per file, no read), so neither a good checkpoint nor a damaged one is
    deleted on the strength of newer checkpoints that are themselves damaged.
    """
    if keep <= 0:
        return
    good_newer = 0
    for ckpt in reversed(run.checkpoints()):
        if good_newer >= keep:
            shutil.rmtree(ckpt, ignore_errors=True)
        elif checkpoint_problem(ckpt, hash_bytes=False) is None:
            good_newer += 1


def load_checkpoint(accelerator: Accelerator, ckpt: Path) -> dict:
    """Restore the training state saved in `ckpt`; returns its loop state."""
    ckpt = Path(ckpt)
    if not is_complete_checkpoint(ckpt):
        raise MissingFileError(f"{ckpt} is not a complete checkpoint (no {CHECKPOINT_MARKER}); "
                               "pass a checkpoints/step_<N> directory or train.resume=auto")
    accelerator.load_state(str(ckpt))
    return json.loads((ckpt / CHECKPOINT_MARKER).read_text())


class WholeOptimizerState:
    """What accelerate checkpoints for `optimizer`: its state_dict with whole tensors.

    A DTensor (FSDP2 shard) in the state is gathered on save (`state_dict` is then a collective:
    accelerate calls it on every rank) and cut back to this rank's shard on load, so the file is the
    one a 1-process or DDP run writes. Plain state passes through unchanged.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        return _whole(self.optimizer.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)
        for param, state in self.optimizer.state.items():
            if not isinstance(param, DTensor):
                continue
            for key, value in state.items():
                # per-element state (momentum, Adam's moments) has the parameter's shape; "step" does not
                if not isinstance(value, DTensor) and value.shape == param.shape:
                    # every rank holds the whole tensor: each keeps its own rows, no communication
                    shard = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
                    state[key] = shard.clone()  # not a view that would keep the whole tensor alive


def _whole(tree: Any) -> Any:
    """`tree` (nested dicts) with every DTensor gathered whole onto the CPU, in iteration order."""
    if isinstance(tree, DTensor):
        return tree.full_tensor().cpu()
    if isinstance(tree, dict):
        return {k: _whole(v) for k, v in tree.items()}
    return tree


def checkpoint_unwrapped_weights(accelerator: Accelerator, module: nn.Module) -> None:
    """Save and load the weights of the model that accelerate prepared as `module`'s own state dict,
    whatever wraps it for training (DDP's `module.`, torch.compile's `_orig_mod.`).

    A checkpoint then resumes with `train.compile` toggled and under any number of processes, and
    export and evaluation read it as it is. Checkpoints written before this (with a wrapper's
    prefixes in their names) still load. Through accelerate's save/load hooks: the save hook replaces
    the wrapped state dict accelerate is about to write, and the load hook loads the file itself and
    takes the model off accelerate's list, which would load it into the wrapper.
    """
    def save_weights(_models: list, weights: list, _output_dir: str) -> None:
        weights[0] = module.state_dict()

    def load_weights(models: list, input_dir: str) -> None:
        module.load_state_dict(unwrapped_names(load_file(Path(input_dir) / WEIGHTS_FILE)))
        models.clear()

    accelerator.register_save_state_pre_hook(save_weights)
    accelerator.register_load_state_pre_hook(load_weights)


def checkpoint_whole_weights(accelerator: Accelerator, model: nn.Module) -> None:
    """Save and load the weights of a fully_shard-ed `model`, which is not registered with accelerate,
    as the whole model.safetensors that accelerate writes for a plain or DDP model.

    Through accelerate's save/load hooks, which run on every rank inside save_state/load_state.
    """
    def save_weights(_models: list, _weights: list, output_dir: str) -> None:
        # rank 0 gets the whole tensors, on the CPU; accelerate's `save` writes on the main process only
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        save(get_model_state_dict(model, options=options), Path(output_dir) / SAFE_WEIGHTS_NAME,
             safe_serialization=True)

    def load_whole_weights(_models: list, input_dir: str) -> None:
        whole = unwrapped_names(load_file(Path(input_dir) / SAFE_WEIGHTS_NAME))
        set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True))

    accelerator.register_save_state_pre_hook(save_weights)
    accelerator.register_load_state_pre_hook(load_whole_weights)


# -- the weights alone (export, evaluation) --------------------------------------------------


# Prefixes that torch.compile / DDP wrappers add to parameter names (in checkpoints written before
# checkpoint_unwrapped_weights, e.g. "_orig_mod.module.lm_head.weight" from a compiled DDP model).
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def unwrapped_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the wrappers' prefixes taken off every name."""
    out = {}
    for name, tensor in state.items():
        while name.startswith(WRAPPER_PREFIXES):  # nested wrappers, in either order
            name = name.split(".", 1)[1]
        out[name] = tensor
    return out


def _load_run_config(run: RunDir) -> dict[str, Any]:
    from omegaconf import OmegaConf  # only the CLI needs it

    if not run.config.is_file():
        raise MissingFileError(f"no {run.config}; the run's resolved config is needed")
    cfg = OmegaConf.to_container(OmegaConf.load(run.config), resolve=True)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise UserError(f"{run.config} has no `model` section; is it a muonlab run config?")
    return cfg


def load_weights(path: str | Path) -> tuple[Transformer, dict[str, Any], RunDir, Path]:
    """(model with the checkpoint's weights, the run config, run dir, checkpoint dir) for a run
    directory (its newest checkpoint) or a checkpoint directory."""
    run, ckpt = locate(path)
    run_cfg = _load_run_config(run)
    state = unwrapped_names(load_file(ckpt / WEIGHTS_FILE))
    if "model.embed_tokens.weight" not in state:
        raise UserError(f"{ckpt / WEIGHTS_FILE} has no model.embed_tokens.weight; not a muonlab checkpoint")
    # The embedding's row count is the vocabulary the run trained with, whatever the data config says.
    vocab_size = state["model.embed_tokens.weight"].shape[0]
    cfg = resolve_model_config({**run_cfg["model"], "vocab_size": vocab_size})
    model = Transformer(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(f"{ckpt / WEIGHTS_FILE} does not match the run's model config: {first}") from None
    return model, run_cfg, run, ckpt
