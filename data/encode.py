"""Tokenize batches of documents on a pool of worker processes, results in input order.

Each worker loads the tokenizer once (the pool's initializer) and encodes every document as
``[BOS] ids EOS``; the main process gets a batch back as one flat array plus the documents'
lengths, so little crosses the process boundary and the order never depends on the workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from tokenizers import Tokenizer

from data.sources import Document
from data.tokenizer import load_tokenizer

Batch = tuple[list[str], list[str]]  # (destinations, texts) of consecutive documents


def usable_cpus() -> int:
    """The cores this process may run on: the default number of workers."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def batches(stream: Iterable[Document], batch_chars: int) -> Iterator[Batch]:
    """Group documents into batches of about ``batch_chars`` characters: one worker task each."""
    kinds: list[str] = []
    texts: list[str] = []
    size = 0
    for kind, text in stream:
        kinds.append(kind)
        texts.append(text)
        size += len(text)
        if size >= batch_chars:
            yield kinds, texts
            kinds, texts, size = [], [], 0
    if texts:
        yield kinds, texts


@dataclass(frozen=True)
class DocumentEncoder:
    """Encodes a batch of documents, each as ``[BOS] ids EOS``, into one flat array of ``dtype``."""

    tokenizer: Tokenizer
    eos_id: int
    bos_id: int | None
    dtype: np.dtype

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The documents' tokens, concatenated, and the number of tokens of each."""
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        extra = 1 + (self.bos_id is not None)
        lengths = np.fromiter((len(e.ids) + extra for e in encodings), dtype=np.int64, count=len(encodings))
        flat = np.empty(int(lengths.sum()), dtype=self.dtype)
        pos = 0
        for e, n in zip(encodings, lengths.tolist(), strict=True):
            if self.bos_id is not None:
                flat[pos] = self.bos_id
            flat[pos + extra - 1 : pos + n - 1] = e.ids
            flat[pos + n - 1] = self.eos_id
            pos += n
        return flat, lengths


# A worker's encoder, set once per process by the pool's initializer: sending the tokenizer along
# with every task would pickle it again for each batch.
_worker_encoder: DocumentEncoder | None = None


def _init_worker(tokenizer_path: str, eos_id: int, bos_id: int | None, dtype: str) -> None:
    global _worker_encoder
    # One process per core already: keep each worker's tokenizer single-threaded.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_encoder = DocumentEncoder(load_tokenizer(tokenizer_path), eos_id, bos_id, np.dtype(dtype))


def _encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_encoder is not None, "_encode runs in a pool worker, after _init_worker"
    return _worker_encoder(texts)


class EncoderPool:
    """``workers`` processes encoding batches with the tokenizer at ``tokenizer_path``.

    A context manager: leaving it stops the workers and drops queued work (an early stop or an
    error). A worker that dies raises ``BrokenProcessPool`` instead of hanging."""

    def __init__(
        self, tokenizer_path: Path, eos_id: int, bos_id: int | None, dtype: np.dtype, workers: int
    ) -> None:
        self.workers = workers
        # spawn: fork is unsafe once torch/tokenizers threads exist. An executor, not a
        # multiprocessing.Pool: only the former notices a dead worker.
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(tokenizer_path), eos_id, bos_id, dtype.str),
        )

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, work: Iterable[Batch]) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """(destinations, tokens, lengths) of each batch, in input order, with at most 2 x workers
        batches in flight (Executor.map would read the whole source ahead into memory)."""
        in_flight: deque = deque()
        for kinds, texts in work:
            in_flight.append((kinds, self._pool.submit(_encode, texts)))
            if len(in_flight) >= 2 * self.workers:
                kinds_done, future = in_flight.popleft()
                yield kinds_done, *future.result()
        while in_flight:
            kinds_done, future = in_flight.popleft()
            yield kinds_done, *future.result()
