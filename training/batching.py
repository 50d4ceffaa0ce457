"""How one optimizer step's global batch splits over processes and micro-batches."""

from __future__ import annotations

from dataclasses import dataclass

from training.config import ConfigError


@dataclass
class BatchPlan:
    """How a global batch splits over processes and micro-batches."""

    per_process: int
    micro: int
    accum: int

    @classmethod
    def of(cls, batch_size: int, micro_batch_size: int | None, processes: int) -> BatchPlan:
        if batch_size % processes:
            raise ConfigError(f"train.batch_size={batch_size} is not divisible by the {processes} processes; "
                              f"use a multiple of {processes}")
        per_process = batch_size // processes
        micro = micro_batch_size or per_process
        if per_process % micro:
            raise ConfigError(f"train.micro_batch_size={micro} does not divide the {per_process} sequences "
                              "each process gets per step; pick a divisor")
        return cls(per_process, micro, per_process // micro)
