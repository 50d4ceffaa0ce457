"""Shared fixtures for the data tests: a small FineWeb-shaped corpus written as jsonl/parquet/txt."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_WORDS = """the of and to in a is that for it as was with be by on not he this are or his from at which
muon adam tail token memory matrix orthogonal gradient spectrum rare frequent learning weight layer
attention value output forward network associative recall isotropic singular entropy rank café naïve"""
WORDS = _WORDS.split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct documents of 20-200 words (with punctuation, newlines and non-ASCII)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 200))]
        lines = [" ".join(words[j : j + 12]) + rng.choice(".,;!?") for j in range(0, len(words), 12)]
        docs.append(f"Document {i}.\n" + "\n".join(lines))
    return docs


def rows(docs: list[str]) -> list[dict]:
    """FineWeb-like records: the text plus extra columns."""
    return [
        {"text": d, "id": f"<urn:{i:08d}>", "url": f"https://example.org/{i}", "score": 2.5 + i % 3}
        for i, d in enumerate(docs)
    ]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(docs)))
    return path


def write_parquet(path: Path, docs: list[str]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows(docs)), path)
    return path


def write_txt_dir(path: Path, docs: list[str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (path / f"doc_{i:04d}.txt").write_text(d, encoding="utf-8")
    return path
