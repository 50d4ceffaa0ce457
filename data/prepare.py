"""Prepare a dataset: source -> tokenizer -> token shards + counts + manifest.

``python -m data.prepare --source SRC --out DIR [--tokenizer NAME|PATH] [--vocab-size N]
[--tokens N] [--val-tokens N] [--workers N] [--shard-tokens N] [--text-field F] [--seed S]``

Documents are tokenized in batches by a pool of worker processes (results consumed in stream
order, so the shards do not depend on the number of workers), each followed by EOS, and packed
into fixed-size shards. Validation comes first: a source's own validation split (Shakespeare's
held-out works) or the first ``val_tokens`` tokens of the stream; neither is ever trained on.
A state file written after every completed shard lets an interrupted run resume there; a
finished directory (``meta.json`` present) makes a re-run a no-op.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.cache import cache_dir
from data.manifest import FORMAT, read_meta, write_meta
from data.shards import dtype_for_vocab, write_shard
from data.sources import AUTO, TRAIN, VAL, Document, bios_settings, has_bios, iter_documents, parse_source
from data.tokenizer import FILE_NAME, load_pretrained, load_tokenizer, save_tokenizer, special_ids, train_bpe

DEFAULT_VOCAB_SIZE = 4096
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_VAL_TOKENS = 10_000_000
DEFAULT_TOKENIZER_SAMPLE_CHARS = 20_000_000
BATCH_CHARS = 1 << 20  # text per worker task: large enough to amortize IPC, small enough to stream
# The BPE sample skips this many characters per validation token at the head of the stream, so the
# tokenizer is (almost surely) trained on training text only; BPE averages 3-5 chars per token.
VAL_SKIP_CHARS_PER_TOKEN = 8
STATE_FILE = ".prepare_state.npz"
LOCK_FILE = ".prepare.lock"


@dataclass(frozen=True)
class Settings:
    """Everything that determines the output; its hash names the cache directory."""

    source: str
    tokenizer: str | None  # None: train a byte-level BPE
    vocab_size: int | None  # of the trained BPE; None for a pretrained tokenizer
    tokens: int | None  # training-token budget; None: the whole source
    val_tokens: int  # budget for sources without their own validation split
    shard_tokens: int
    text_field: str
    seed: int  # order in which "+"-joined sources are interleaved
    bos: bool
    tokenizer_sample_chars: int | None
    bios: dict[str, Any] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # JSON-normalized, to compare with a stored copy

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


def make_settings(
    source: str,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    tokenizer: str | None = None,
    tokens: int | None = None,
    val_tokens: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    seed: int = 0,
    text_field: str = "text",
    bios: dict[str, Any] | None = None,
    bos: bool = False,
    tokenizer_sample_chars: int = DEFAULT_TOKENIZER_SAMPLE_CHARS,
) -> Settings:
    """Validated, normalized settings (irrelevant knobs set to None so they do not change the key)."""
    limits = (("tokens", tokens, 1), ("val_tokens", val_tokens, 0), ("shard_tokens", shard_tokens, 1))
    for name, value, low in limits:
        if value is not None and (int(value) != value or value < low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    parse_source(source, text_field=text_field, bios=bios)  # fail early on a bad spec or missing file
    if tokenizer is not None and Path(tokenizer).expanduser().exists():
        tokenizer = str(Path(tokenizer).expanduser().resolve())
    return Settings(
        source=source,
        tokenizer=tokenizer,
        vocab_size=None if tokenizer else int(vocab_size),
        tokens=None if tokens is None else int(tokens),
        val_tokens=DEFAULT_VAL_TOKENS if val_tokens is None else int(val_tokens),
        shard_tokens=int(shard_tokens),
        text_field=text_field,
        seed=int(seed),
        bos=bool(bos),
        tokenizer_sample_chars=None if tokenizer else int(tokenizer_sample_chars),
        bios=bios_settings(bios) if has_bios(source) else None,
    )


def dataset_dir_for(source: str, **settings: Any) -> Path:
    """The cache directory for a dataset prepared with these settings (same keywords as prepare)."""
    s = make_settings(source, **settings)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")[:48]
    return cache_dir() / "datasets" / f"{slug}-{s.key()}"


def ensure_prepared(source: str, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """A ready dataset directory for train.py: ``data_dir`` as is when it already holds a finished
    dataset, otherwise prepared there (or in the cache directory for these settings) first."""
    if data_dir is not None and read_meta(data_dir) is not None:
        return Path(data_dir)
    settings = {k: v for k, v in kwargs.items() if k != "workers"}
    out = Path(data_dir) if data_dir is not None else dataset_dir_for(source, **settings)
    return prepare(source, out, **kwargs)


def prepare(
    source: str,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    stop_after_shards: int | None = None,
    **settings: Any,
) -> Path:
    """Prepare ``source`` into ``out_dir`` (keywords: see ``make_settings``); returns ``out_dir``.

    Idempotent: a finished directory is left untouched, an interrupted one is resumed.
    ``stop_after_shards`` ends the run after that many new shards, as an interruption would
    (re-run to continue). Concurrent calls on one directory wait for each other (file lock)."""
    s = make_settings(source, **settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out / LOCK_FILE):
        meta = read_meta(out)
        if meta is not None:
            if meta["settings"] != s.as_dict():
                raise ValueError(
                    f"{out} already holds a dataset prepared with other settings ({meta['settings']}); "
                    "choose another --out or delete that directory"
                )
            print(f"{out}: already prepared ({meta['train_tokens']:,} train tokens), nothing to do")
            return out
        _Run(s, out, workers or _cpu_count()).run(stop_after_shards)
    return out


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
        # spawn: fork is unsafe once torch/tokenizers threads exist. An executor, unlike
        # multiprocessing.Pool, raises BrokenProcessPool when a worker dies instead of hanging.
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(self.out / FILE_NAME), self.eos_id, self.bos_id, self.dtype.str),
        )
        with bar, _shutdown_on_exit(pool):
            for kinds, (flat, lengths) in _ordered_map(pool, _batches(stream), depth=2 * self.workers):
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
            raise ValueError(
                f"source {self.s.source!r} produced no training tokens after {self.val.tokens:,} validation "
                "tokens; pass a smaller --val-tokens (or check the source)"
            )
        self.train.finish(self.out, self.dtype)
        self.val.finish(self.out, self.dtype)
        _atomic_save(self.out / "token_counts.npy", lambda f: np.save(f, self.counts))
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
                raise ValueError(
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
        _atomic_save(self.out / STATE_FILE, lambda f: np.savez(f, **arrays))

    def _load_state(self) -> bool:
        path = self.out / STATE_FILE
        if not path.exists() or not (self.out / FILE_NAME).exists():
            return False
        with np.load(path) as z:
            info = json.loads(str(z["info"]))
            if info["settings"] != self.s.as_dict():
                raise ValueError(
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


# --- worker side -------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, eos_id: int, bos_id: int | None, dtype: str) -> None:
    # One process per core already: keep each worker's tokenizer single-threaded.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tok=load_tokenizer(tokenizer_path), eos=eos_id, bos=bos_id, dtype=np.dtype(dtype))


def _encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a batch of documents, concatenated (each as [BOS] ids EOS), and their lengths."""
    encodings = _WORKER["tok"].encode_batch_fast(texts, add_special_tokens=False)
    extra = 1 + (_WORKER["bos"] is not None)
    lengths = np.fromiter((len(e.ids) + extra for e in encodings), dtype=np.int64, count=len(encodings))
    flat = np.empty(int(lengths.sum()), dtype=_WORKER["dtype"])
    pos = 0
    for e, n in zip(encodings, lengths.tolist(), strict=True):
        if _WORKER["bos"] is not None:
            flat[pos] = _WORKER["bos"]
        flat[pos + extra - 1 : pos + n - 1] = e.ids
        flat[pos + n - 1] = _WORKER["eos"]
        pos += n
    return flat, lengths


# --- helpers -----------------------------------------------------------------------------------


def _batches(stream: Iterator[Document]) -> Iterator[tuple[list[str], list[str]]]:
    """Group documents into (kinds, texts) batches of about BATCH_CHARS characters."""
    kinds: list[str] = []
    texts: list[str] = []
    size = 0
    for kind, text in stream:
        kinds.append(kind)
        texts.append(text)
        size += len(text)
        if size >= BATCH_CHARS:
            yield kinds, texts
            kinds, texts, size = [], [], 0
    if texts:
        yield kinds, texts


def _ordered_map(
    pool: ProcessPoolExecutor, batches: Iterator[tuple[list[str], list[str]]], depth: int
) -> Iterator[tuple[list[str], tuple[np.ndarray, np.ndarray]]]:
    """Encode batches on the pool, at most ``depth`` in flight (Executor.map would read the whole
    source ahead into memory), yielding (kinds, result) in input order."""
    in_flight: deque = deque()
    for kinds, texts in batches:
        in_flight.append((kinds, pool.submit(_encode, texts)))
        if len(in_flight) >= depth:
            kinds_done, future = in_flight.popleft()
            yield kinds_done, future.result()
    while in_flight:
        kinds_done, future = in_flight.popleft()
        yield kinds_done, future.result()


@contextlib.contextmanager
def _shutdown_on_exit(pool: ProcessPoolExecutor) -> Iterator[None]:
    """Stop the workers on leaving, dropping queued work (an early stop or an error)."""
    try:
        yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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


def _atomic_save(path: Path, write: Any) -> None:
    buf = io.BytesIO()
    write(buf)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- CLI ---------------------------------------------------------------------------------------


def _count(text: str) -> int:
    """Token counts accept scientific notation: --tokens 5e9."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text}")
    return int(value)


def _bios_setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--bios expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    sources = "builtin:shakespeare | PATH/GLOB | hf:NAME[:CONFIG] | bios, or several joined with +"
    p.add_argument("--source", required=True, help=sources)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tokenizer", help="tokenizer.json path or hub name (default: train a byte-level BPE)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="vocab of the trained BPE")
    p.add_argument("--tokens", type=_count, help="training-token budget (default: the whole source)")
    val_help = (f"validation budget of path/hf sources (default {DEFAULT_VAL_TOKENS:.0e}); "
                "builtin:shakespeare has its own validation works, bios is training-only")
    p.add_argument("--val-tokens", type=_count, help=val_help)
    p.add_argument("--workers", type=int, help="tokenizer processes (default: all cores)")
    p.add_argument("--shard-tokens", type=_count, default=DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--text-field", default="text", help="text column of jsonl/parquet/hf sources")
    p.add_argument("--seed", type=int, default=0, help="interleaving order of '+'-joined sources")
    p.add_argument("--bos", action="store_true", help="prepend a BOS token to every document")
    p.add_argument("--bios", type=_bios_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="data.bios.BiosConfig setting (repeatable)")
    a = p.parse_args(argv)
    try:
        prepare(
            a.source, a.out, workers=a.workers, vocab_size=a.vocab_size, tokenizer=a.tokenizer,
            tokens=a.tokens, val_tokens=a.val_tokens, shard_tokens=a.shard_tokens, seed=a.seed,
            text_field=a.text_field, bios=dict(a.bios) or None, bos=a.bos,
        )
    except (ValueError, KeyError, TypeError, FileNotFoundError, ImportError, RuntimeError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")  # args[0]: KeyError's str() adds quotes
    except KeyboardInterrupt:
        sys.exit(f"interrupted: re-run the same command to resume {a.out} after its last complete shard")


if __name__ == "__main__":
    main()
