"""Process-level set-up: memory behaviour and the accelerator (devices, mixed precision, trackers)."""

from __future__ import annotations

import ctypes
import sys

import torch
from accelerate import Accelerator

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory in the process instead of returning it to the OS.

    By default large blocks (the [B, T, V] logits, activations) are mmapped and unmapped on every
    step, then page-faulted back in: on a 2-core CPU that costs ~20% of a tiny model's train step.
    No effect off Linux/glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


PRECISIONS = ("auto", "bf16", "fp32")


def make_accelerator(precision: str, wandb: bool) -> Accelerator:
    """The run's accelerator: bf16 autocast for precision "bf16" ("auto": on GPU), wandb if asked."""
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    return Accelerator(
        # Without a GPU, cpu=True is what makes accelerate see a torchrun launch as MULTI_CPU (gloo).
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if precision == "bf16" else "no",
        log_with="wandb" if wandb else None,
    )
