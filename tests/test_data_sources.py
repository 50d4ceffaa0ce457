"""data.sources: local txt/jsonl/parquet, globs and directories, hf: through datasets, mixtures, errors."""

from __future__ import annotations

import gzip

import pytest
from test_data_corpus import make_docs, write_jsonl, write_parquet, write_txt_dir

from data.sources import AUTO, TRAIN, VAL, iter_documents, parse_source

DOCS = make_docs(12)


def texts(source, **kwargs):
    return [text for _, text in iter_documents(parse_source(source, **kwargs))]


def test_local_formats(tmp_path):
    write_txt_dir(tmp_path / "txt", DOCS)
    write_jsonl(tmp_path / "a.jsonl", DOCS[:5])
    write_parquet(tmp_path / "b.parquet", DOCS[5:])
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write((tmp_path / "a.jsonl").read_text())
    assert texts(str(tmp_path / "txt")) == DOCS  # a directory: its files in name order
    assert texts(str(tmp_path / "txt" / "doc_000[0-2].txt")) == DOCS[:3]  # a glob
    assert texts(str(tmp_path / "a.jsonl")) == DOCS[:5]
    assert texts(str(tmp_path / "b.parquet")) == DOCS[5:]
    assert texts(str(tmp_path / "c.jsonl.gz")) == DOCS[:5]
    assert texts(str(tmp_path / "*.*")) == DOCS[:5] + DOCS[5:] + DOCS[:5]  # sorted: a, b, c
    assert {kind for kind, _ in iter_documents(parse_source(str(tmp_path / "a.jsonl")))} == {AUTO}


def test_text_field(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    assert texts(str(tmp_path / "a.jsonl"), text_field="url")[3] == "https://example.org/3"
    with pytest.raises(KeyError, match="no field 'body'.*url"):
        texts(str(tmp_path / "a.jsonl"), text_field="body")
    with pytest.raises(TypeError, match="holds float, not str"):
        texts(str(tmp_path / "a.jsonl"), text_field="score")


def test_hf_source_streams_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "hub").mkdir()
    write_parquet(tmp_path / "hub" / "train-00000.parquet", DOCS)  # a local repo shaped like the hub's
    assert texts(f"hf:{tmp_path / 'hub'}") == DOCS
    with pytest.raises(KeyError, match="no field 'body'.*'url'"):
        texts(f"hf:{tmp_path / 'hub'}", text_field="body")


def test_mixture_is_a_deterministic_interleaving(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:6])
    write_jsonl(tmp_path / "b.jsonl", DOCS[6:])
    spec = f"{tmp_path / 'a.jsonl'}+{tmp_path / 'b.jsonl'}"
    mixed = texts(spec)
    assert sorted(mixed) == sorted(DOCS) and mixed != DOCS
    assert [d for d in mixed if d in DOCS[:6]] == DOCS[:6]  # each part keeps its own order
    assert mixed == texts(spec)
    other = [t for _, t in iter_documents(parse_source(spec), seed=1)]
    assert other != mixed and sorted(other) == sorted(DOCS)


def test_bios_documents_are_training_only():
    bios = {"n_people": 8, "n_groups": 2, "max_exposures": 2}
    kinds = {kind for kind, _ in iter_documents(parse_source("bios", bios=bios))}
    assert kinds == {TRAIN}
    with pytest.raises(ValueError, match="unknown bios settings.*n_people"):
        parse_source("bios", bios={"people": 8})


def test_bios_heldout_documents_come_first_as_validation():
    bios = {"n_people": 8, "n_groups": 2, "max_exposures": 2, "heldout": 1}
    kinds = [kind for kind, _ in iter_documents(parse_source("bios", bios=bios))]
    assert kinds[:8] == [VAL] * 8 and set(kinds[8:]) == {TRAIN}


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="matches no"):
        parse_source(str(tmp_path / "*.parquet"))
    with pytest.raises(ValueError, match="builtin:shakespeare"):
        parse_source("builtin:homer")
    with pytest.raises(ValueError, match="empty source"):
        parse_source("builtin:shakespeare+")
    with pytest.raises(ValueError, match="hf:NAME"):
        parse_source("hf:")
