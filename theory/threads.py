"""Run the theory models' tiny matrix ops on one intra-op thread, restoring the setting afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded() -> Iterator[None]:
    """Temporarily use one torch intra-op thread.

    The theory models work on K x K matrices with K <= a few hundred, where threading only adds
    synchronisation: on the project's loaded 2-core machine a 64 x 64 SVD took 200 ms with two
    threads and 2 ms with one. The previous thread count is restored on exit.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
