"""Document sources: turn a source spec into one deterministic stream of documents.

Specs (several may be joined with ``+``):

- ``builtin:shakespeare``: the embedded corpus; its validation works are the validation split.
- a local file, directory or glob of ``.txt`` (one document per file), ``.jsonl`` / ``.jsonl.gz``
  (one document per line, field ``text_field``) or ``.parquet`` (column ``text_field``).
- ``hf:NAME[:CONFIG]``: a Hugging Face dataset, split ``train``, streamed through ``datasets``.
- ``bios``: the synthetic biographies of ``data.bios``; their validation split is the held-out
  biographies of ``data.bios.heldout`` (none by default: every fact must be trained on).

Each document carries a destination: ``VAL`` (a source's own validation split), ``TRAIN``, or
``AUTO`` (the first ones fill the validation budget, the rest are training).
"""

from __future__ import annotations

import glob
import gzip
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import MissingFileError, UserError

VAL, TRAIN, AUTO = "val", "train", "auto"
FILE_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")

Document = tuple[str, str]  # (destination, text)


class MissingFieldError(UserError, KeyError):
    """A record without the text field: a KeyError, and the user's to fix (--text-field)."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError's str() would quote the message


class FieldTypeError(UserError, TypeError):
    """A text field that holds something other than a string."""


class MissingPackageError(UserError, ImportError):
    """A source that needs an optional package that is not installed."""


@dataclass(frozen=True)
class Part:
    """One ``+``-separated piece of a source spec."""

    spec: str
    documents: Callable[[], Iterator[Document]]
    auto: bool = True  # its documents are AUTO (no validation split of its own)


def parse_source(
    source: str, *, text_field: str = "text", bios: dict[str, Any] | None = None
) -> list[Part]:
    """Split a source spec on ``+`` and resolve each piece; a UserError for a bad spec or missing file."""
    specs = [s.strip() for s in source.split("+")]
    if not source.strip() or not all(specs):
        raise UserError(f"empty source in {source!r}; use e.g. 'builtin:shakespeare' or 'data/*.jsonl'")
    return [_part(spec, text_field, bios or {}) for spec in specs]


def has_bios(source: str) -> bool:
    """Whether the spec includes the synthetic biographies."""
    return "bios" in (s.strip() for s in source.split("+"))


def iter_documents(parts: list[Part], seed: int = 0) -> Iterator[Document]:
    """All documents of all parts. Several parts are interleaved: each next document comes from a
    part drawn at random (seeded), so the stream is a deterministic mixture."""
    if len(parts) == 1:
        yield from parts[0].documents()
        return
    rng = random.Random(seed)
    streams = [p.documents() for p in parts]
    while streams:
        i = rng.randrange(len(streams))
        try:
            yield next(streams[i])
        except StopIteration:
            streams.pop(i)


def _part(spec: str, text_field: str, bios: dict[str, Any]) -> Part:
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name != "shakespeare":
            raise UserError(f"unknown builtin corpus {name!r}; the only one is 'builtin:shakespeare'")
        return Part(spec, _shakespeare, auto=False)
    if spec == "bios":
        config = _bios_config(bios)
        return Part(spec, lambda: _bios(config), auto=False)
    if spec.startswith("hf:"):
        name, _, config = spec.removeprefix("hf:").partition(":")
        if not name:
            raise UserError(f"{spec!r}: expected hf:NAME or hf:NAME:CONFIG")
        return Part(spec, lambda: _hf(name, config or None, text_field))
    files = resolve_files(spec)
    return Part(spec, lambda: _files(files, text_field))


def resolve_files(spec: str) -> list[Path]:
    """The sorted files a path, directory or glob names; a clear error when there are none."""
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        candidates = [Path(p) for p in glob.glob(str(path), recursive=True)]
    elif path.is_dir():
        candidates = [p for p in path.rglob("*") if p.is_file()]
    elif path.exists():
        candidates = [path]
    else:
        raise MissingFileError(
            f"source {spec!r}: no such file or directory (expected builtin:shakespeare, bios, "
            f"hf:NAME[:CONFIG], or a path/glob of {', '.join(FILE_SUFFIXES)} files)"
        )
    files = sorted(p for p in candidates if p.is_file() and p.name.endswith(FILE_SUFFIXES))
    if not files:
        raise MissingFileError(f"source {spec!r} matches no {', '.join(FILE_SUFFIXES)} files")
    return files


def _shakespeare() -> Iterator[Document]:
    from data import shakespeare

    for split in (VAL, TRAIN):  # validation first, like the budgeted validation of other sources
        for text in shakespeare.documents(split):
            yield split, text


def bios_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Every BiosConfig field, defaults filled in: what the manifest records for the QA eval."""
    return asdict(_bios_config(settings or {}))


def _bios_config(settings: dict[str, Any]) -> Any:
    from data.bios import BiosConfig

    valid = BiosConfig.field_names()
    unknown = set(settings) - set(valid)
    if unknown:
        raise UserError(f"unknown bios settings {sorted(unknown)}; valid: {', '.join(valid)}")
    return BiosConfig(**settings)


def _bios(config: Any) -> Iterator[Document]:
    from data.bios import documents, heldout_documents

    for text in heldout_documents(config):  # validation first, like the other sources
        yield VAL, text
    for text in documents(config):
        yield TRAIN, text


def _hf(name: str, config: str | None, text_field: str) -> Iterator[Document]:
    try:
        import datasets  # imported here: training on prepared shards must not need `datasets`
    except ImportError as e:
        raise MissingPackageError("hf: sources need the `datasets` package: pip install datasets") from e
    try:
        rows = datasets.load_dataset(name, config, split="train", streaming=True)
    except FileNotFoundError as e:  # no such dataset, on the hub or on disk
        raise MissingFileError(str(e)) from e
    except ValueError as e:  # e.g. a config the dataset does not have
        raise UserError(str(e)) from e
    if rows.column_names is not None:  # known up front: fail fast, and read only the text column
        if text_field not in rows.column_names:
            raise _no_field(f"hf:{name}", text_field, rows.column_names)
        rows = rows.select_columns([text_field])
    for i, row in enumerate(rows):
        yield AUTO, _field(row, text_field, f"hf:{name} row {i}")


def _files(files: list[Path], text_field: str) -> Iterator[Document]:
    for path in files:
        if path.name.endswith(".txt"):
            yield AUTO, path.read_text(encoding="utf-8")
        elif path.name.endswith(".parquet"):
            yield from ((AUTO, _text(t, f"{path}")) for t in _parquet(path, text_field))
        else:
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield AUTO, _field(json.loads(line), text_field, f"{path}:{n}")


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise _no_field(str(path), text_field, pf.schema_arrow.names)
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        yield from batch.column(0).to_pylist()


def _field(row: dict[str, Any], text_field: str, where: str) -> str:
    if text_field not in row:
        raise _no_field(where, text_field, row)
    return _text(row[text_field], where)


def _no_field(where: str, text_field: str, available: Iterable[str]) -> MissingFieldError:
    fields = sorted(available)
    return MissingFieldError(f"{where} has no field {text_field!r} (fields: {fields}); set --text-field")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        kind = type(value).__name__
        raise FieldTypeError(f"{where}: the text field holds {kind}, not str; check --text-field")
    return value
