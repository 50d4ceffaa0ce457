"""The resumable prepare pipeline: source -> tokenizer -> token shards + counts + manifest.

Documents are tokenized in batches by a pool of worker processes (``data.encode``; results
consumed in stream order, so the shards do not depend on the number of workers), each followed
by EOS, and packed into fixed-size shards. Validation comes first: a source's own validation
split (Shakespeare's held-out works) or the first ``val_tokens`` tokens of the stream; neither is
ever trained on. A state file written after every completed shard lets an interrupted run resume
there; a finished directory (``meta.json`` present) makes a re-run a no-op. Runs on one
directory wait for each other on a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.errors import UserError
from common.files import write_with
from data.dataset import DatasetDir
from data.encode import EncoderPool, batches, usable_cpus
from data.manifest import FORMAT, read_meta, write_meta
from data.settings import Settings
from data.shards import dtype_for_vocab, write_shard
from data.sources import AUTO, TRAIN, VAL, Document, iter_documents, parse_source
from data.tokenizer import FILE_NAME, load_pretrained, load_tokenizer, save_tokenizer, special_ids, train_bpe

BATCH_CHARS = 1 << 20  # text per worker task: large enough to amortize IPC, small enough to stream
# The BPE sample skips this many characters per validation token at the head of the stream, so the
# tokenizer is (almost surely) trained on training text only; BPE averages 3-5 chars per token.
VAL_SKIP_CHARS_PER_TOKEN = 8
STATE_FILE = ".prepare_state.npz"
LOCK_FILE = ".prepare.lock"


def prepare_dataset(
    settings: Settings, out_dir: Path, *, workers: int | None = None, stop_after_shards: int | None = None
) -> Path:
    """Prepare a dataset with ``settings`` into ``out_dir`` (``workers`` processes, default: one per
    core); returns ``out_dir``. A finished directory is left untouched, an interrupted one resumed.
    ``stop_after_shards`` ends the run after that many new shards, as an interruption would."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir / LOCK_FILE):
        meta = read_meta(out_dir)
        if meta is not None:
            if meta["settings"] != settings.as_dict():
                raise UserError(
                    f"{out_dir} already holds a dataset prepared with other settings ({meta['settings']}); "
                    "choose another --out or delete that directory"
                )
            print(f"{out_dir}: already prepared ({meta['train_tokens']:,} train tokens), nothing to do")
            return out_dir
        _Run(settings, out_dir, workers or usable_cpus()).run(stop_after_shards)
    return out_dir


@dataclass
class _Split:
    """Shards of one split being written: the finished ones and the tokens not yet in a shard."""

    name: str
    shards: list[dict[str, Any]] = field(default_factory=list)
    documents: int = 0
    pending: list[np.ndarray] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + sum(p.size for p in self.pending)

    def add(self, tokens: np.ndarray, out: Path, shard_tokens: int, dtype: np.dtype) -> int:
        """Append tokens; write every shard that fills up. Returns the number of shards written."""
        self.pending.append(tokens)
        written = 0
        while sum(p.size for p in self.pending) >= shard_tokens:
            data = np.concatenate(self.pending)
            self._write(data[:shard_tokens], out, dtype)
            self.pending = [data[shard_tokens:]]
            written += 1
        return written

    def finish(self, out: Path, dtype: np.dtype) -> None:
        data = _concat(self.pending, dtype)
        if data.size:
            self._write(data, out, dtype)
        self.pending = []

    def _write(self, data: np.ndarray, out: Path, dtype: np.dtype) -> None:
        name = f"{self.name}_{len(self.shards):06d}.bin"
        sha = write_shard(out / name, data, dtype)
        self.shards.append({"file": name, "tokens": int(data.size), "sha256": sha})


class _Run:
    """One prepare run over an output directory, resuming from its state file if there is one."""

    def __init__(self, s: Settings, out: Path, workers: int) -> None:
        self.s, self.out, self.workers = s, out, workers
        self.parts = parse_source(s.source, text_field=s.text_field, bios=s.bios)
        self.train, self.val = _Split(TRAIN), _Split(VAL)
        self.docs_consumed = 0  # documents of the stream fully handled
        self.val_budget_used = 0  # validation tokens taken from AUTO documents
        self.done = False  # the training-token budget is reached
        self.counts: np.ndarray | None = None  # per-token training counts
        if not self._load_state():
            self._build_tokenizer()
        tok = load_tokenizer(out / FILE_NAME)
        self.vocab_size = tok.get_vocab_size()
        self.eos_id, self.bos_id = special_ids(tok, bos=s.bos)
        self.dtype = dtype_for_vocab(self.vocab_size)
        if self.counts is None:
            self.counts = np.zeros(self.vocab_size, dtype=np.int64)
            self._save_state()

    def run(self, stop_after_shards: int | None) -> None:
        start, start_tokens = time.perf_counter(), self.train.tokens + self.val.tokens
        new_shards = 0
        bar = tqdm(
            total=self.s.tokens + self._val_total() if self.s.tokens else None,
            initial=start_tokens,
            unit="tok",
            unit_scale=True,
            desc=f"prepare {self.s.source}",
            dynamic_ncols=True,
        )
        stream = itertools.islice(iter_documents(self.parts, self.s.seed), self.docs_consumed, None)
        pool = EncoderPool(self.out / FILE_NAME, self.eos_id, self.bos_id, self.dtype, self.workers)
        with bar, pool:
            for kinds, flat, lengths in pool.map(batches(stream, BATCH_CHARS)):
                before = self.train.tokens + self.val.tokens
                written = self._route(kinds, flat, lengths)
                self.docs_consumed += len(kinds)
                bar.update(self.train.tokens + self.val.tokens - before)
                bar.set_postfix(shards=len(self.train.shards) + len(self.val.shards), docs=self.docs_consumed)
                if self.done:
                    break
                if written:
                    self._save_state()
                    new_shards += written
                    if stop_after_shards is not None and new_shards >= stop_after_shards:
                        print(f"stopped after {new_shards} new shards; re-run the same command to resume")
                        return
        self._finish(time.perf_counter() - start, self.train.tokens + self.val.tokens - start_tokens)

    def _route(self, kinds: list[str], flat: np.ndarray, lengths: np.ndarray) -> int:
        """Send each document of a tokenized batch to its split; returns the shards written."""
        pieces: dict[str, list[np.ndarray]] = {TRAIN: [], VAL: []}
        train_tokens, pos = self.train.tokens, 0
        for kind, n in zip(kinds, lengths.tolist(), strict=True):
            dest, take = kind, n
            if kind == AUTO:
                room = self.s.val_tokens - self.val_budget_used
                dest, take = (VAL, min(n, room)) if room > 0 else (TRAIN, n)
                if dest == VAL:
                    self.val_budget_used += take  # the rest of a document cut here is dropped
            if dest == TRAIN and self.s.tokens is not None:
                take = min(take, self.s.tokens - train_tokens)
                self.done = train_tokens + take >= self.s.tokens
            pieces[dest].append(flat[pos : pos + take])
            train_tokens += take if dest == TRAIN else 0
            pos += n
            if self.done:
                break
        written = 0
        for split in self._splits():
            if pieces[split.name]:
                tokens = np.concatenate(pieces[split.name])
                if split is self.train:  # one bincount per batch: minlength-sized arrays are not free
                    self.counts += np.bincount(tokens, minlength=self.vocab_size)
                written += split.add(tokens, self.out, self.s.shard_tokens, self.dtype)
                split.documents += len(pieces[split.name])
        return written

    def _finish(self, seconds: float, tokens: int) -> None:
        if self.train.tokens == 0:
            raise UserError(
                f"source {self.s.source!r} produced no training tokens after {self.val.tokens:,} validation "
                "tokens; pass a smaller --val-tokens (or check the source)"
            )
        self.train.finish(self.out, self.dtype)
        self.val.finish(self.out, self.dtype)
        write_with(DatasetDir(self.out).token_counts, lambda f: np.save(f, self.counts))
        meta = {
            "format": FORMAT,
            "source": self.s.source,
            "tokenizer": self.s.tokenizer or "bpe",
            "tokenizer_file": FILE_NAME,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
            "dtype": self.dtype.name,
            "train_tokens": self.train.tokens,
            "val_tokens": self.val.tokens,
            "train_documents": self.train.documents,
            "val_documents": self.val.documents,
            "shards": self.train.shards,
            "val_shards": self.val.shards,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": self.s.as_dict(),
        }
        if self.s.bios is not None:
            meta["bios"] = self.s.bios
        write_meta(self.out, meta)
        (self.out / STATE_FILE).unlink(missing_ok=True)
        rate = tokens / max(seconds, 1e-9)
        print(
            f"prepared {self.out}\n"
            f"  source     {self.s.source}  (tokenizer {meta['tokenizer']}, vocab {self.vocab_size}, "
            f"{self.dtype.name})\n"
            f"  train      {self.train.tokens:,} tokens, {self.train.documents:,} docs, "
            f"{len(self.train.shards)} shards\n"
            f"  val        {self.val.tokens:,} tokens, {self.val.documents:,} docs, "
            f"{len(self.val.shards)} shards\n"
            f"  this run   {tokens:,} tokens in {seconds:.1f} s ({rate:,.0f} tokens/s, "
            f"{self.workers} workers)"
        )

    def _splits(self) -> tuple[_Split, _Split]:
        return self.train, self.val

    def _val_total(self) -> int:
        return self.s.val_tokens if any(p.auto for p in self.parts) else 0

    def _build_tokenizer(self) -> None:
        if self.s.tokenizer is not None:
            tok = load_pretrained(self.s.tokenizer)
        else:
            sample = _bpe_sample(iter_documents(self.parts, self.s.seed), self.s)
            tok = train_bpe(sample, self.s.vocab_size, bos=self.s.bos)
            if tok.get_vocab_size() <= 256 + 1:
                raise UserError(
                    f"no training text to fit the tokenizer on in {self.s.source!r} after skipping the head "
                    f"of the stream reserved for {self.s.val_tokens:,} validation tokens; pass a smaller "
                    "--val-tokens (or check the source)"
                )
        save_tokenizer(tok, self.out)

    def _save_state(self) -> None:
        info = {
            "settings": self.s.as_dict(),
            "docs_consumed": self.docs_consumed,
            "val_budget_used": self.val_budget_used,
            "splits": {sp.name: {"shards": sp.shards, "documents": sp.documents} for sp in self._splits()},
        }
        arrays = {
            "info": np.array(json.dumps(info)),
            "counts": self.counts,
            **{f"pending_{sp.name}": _concat(sp.pending, self.dtype) for sp in self._splits()},
        }
        write_with(self.out / STATE_FILE, lambda f: np.savez(f, **arrays))

    def _load_state(self) -> bool:
        path = self.out / STATE_FILE
        if not path.exists() or not (self.out / FILE_NAME).exists():
            return False
        with np.load(path) as z:
            info = json.loads(str(z["info"]))
            if info["settings"] != self.s.as_dict():
                raise UserError(
                    f"{self.out} holds an interrupted run with other settings ({info['settings']}); "
                    "re-run with those settings to resume, or delete the directory"
                )
            self.counts = z["counts"].copy()
            for sp in self._splits():
                sp.shards = info["splits"][sp.name]["shards"]
                sp.documents = info["splits"][sp.name]["documents"]
                sp.pending = [z[f"pending_{sp.name}"].copy()]
        self.docs_consumed, self.val_budget_used = info["docs_consumed"], info["val_budget_used"]
        print(f"{self.out}: resuming after {len(self.train.shards) + len(self.val.shards)} shards")
        return True


def _bpe_sample(stream: Iterator[Document], s: Settings) -> Iterator[str]:
    """Training text for the BPE: skips validation documents and the stream head that will become
    validation, then yields documents up to ``tokenizer_sample_chars`` characters."""
    skip = s.val_tokens * VAL_SKIP_CHARS_PER_TOKEN
    taken = 0
    for kind, text in stream:
        if kind == VAL:
            continue
        if kind == AUTO and skip > 0:
            skip -= len(text)
            continue
        yield text
        taken += len(text)
        if taken >= s.tokenizer_sample_chars:
            return


def _concat(chunks: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: runs on one directory (several ranks) go one at a time."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

