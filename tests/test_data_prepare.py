"""data.prepare on local FineWeb-shaped fixtures: content, determinism, resume, budgets, errors."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from test_data_corpus import make_docs, write_jsonl, write_parquet

import data.pipeline as prep
from common.errors import MissingFileError, UserError
from data.bios import BiosConfig, documents, heldout_documents
from data.dataset import DatasetDir
from data.loader import TokenLoader
from data.manifest import load_meta
from data.pipeline import STATE_FILE
from data.prepare import config_settings, dataset_dir_for, ensure_prepared, main, prepare, prepare_data
from data.settings import make_settings
from data.shards import read_shard
from data.tokenizer import load_tokenizer
from training.config import DataSection

DOCS = make_docs(120)
SETTINGS = {"vocab_size": 320, "val_tokens": 600, "shard_tokens": 1500}


def split_tokens(data_dir, split: str) -> np.ndarray:
    meta = load_meta(data_dir)
    shards = meta["shards" if split == "train" else "val_shards"]
    return np.concatenate([read_shard(data_dir / s["file"]) for s in shards])


def assert_same_dataset(a, b) -> None:
    """Same shards (names, token counts, sha256) and the same token counts."""
    meta_a, meta_b = load_meta(a), load_meta(b)
    assert meta_a["shards"] == meta_b["shards"] and meta_a["val_shards"] == meta_b["val_shards"]
    np.testing.assert_array_equal(np.load(a / "token_counts.npy"), np.load(b / "token_counts.npy"))


def split_docs(tokens: np.ndarray, eos: int) -> list[np.ndarray]:
    ends = np.flatnonzero(tokens == eos)
    return np.split(tokens[: ends[-1] + 1], ends[:-1] + 1)


@pytest.fixture(scope="module", autouse=True)
def small_batches():
    """~3 documents per worker task, so runs have many batches in flight and resume points."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prep, "BATCH_CHARS", 2000)
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return {"jsonl": write_jsonl(root / "d.jsonl", DOCS), "parquet": write_parquet(root / "d.parquet", DOCS)}


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    return prepare(str(corpus["jsonl"]), tmp_path_factory.mktemp("prepared"), workers=1, **SETTINGS)


def test_shards_decode_back_to_documents(prepared):
    meta = load_meta(prepared)
    tok, eos = load_tokenizer(prepared), meta["eos_id"]
    encoded = [tok.encode(d).ids + [eos] for d in DOCS]
    stream = np.concatenate(encoded)
    ends = np.cumsum([len(e) for e in encoded])
    n_val_docs = int(np.searchsorted(ends, SETTINGS["val_tokens"])) + 1  # the last one is cut at the budget

    val, train = split_tokens(prepared, "val"), split_tokens(prepared, "train")
    assert len(meta["shards"]) > 10 and all(s["tokens"] == 1500 for s in meta["shards"][:-1])
    np.testing.assert_array_equal(val, stream[: SETTINGS["val_tokens"]])
    np.testing.assert_array_equal(train, stream[ends[n_val_docs - 1] :])
    train_texts = [tok.decode(d[:-1].tolist()) for d in split_docs(train, eos)]
    assert train_texts == DOCS[n_val_docs:]
    assert not set(train_texts) & set(DOCS[:n_val_docs])  # validation documents are never trained on
    assert (meta["val_documents"], meta["train_documents"]) == (n_val_docs, len(DOCS) - n_val_docs)
    assert (meta["val_tokens"], meta["train_tokens"]) == (val.size, train.size)


def test_counts_equal_a_direct_count(prepared):
    counts = np.load(prepared / "token_counts.npy")
    train = split_tokens(prepared, "train")
    assert counts.dtype == np.int64 and counts.shape == (load_meta(prepared)["vocab_size"],)
    np.testing.assert_array_equal(counts, np.bincount(train, minlength=counts.size))


def test_workers_batching_and_file_format_do_not_change_the_shards(corpus, prepared, tmp_path, monkeypatch):
    out = prepare(str(corpus["parquet"]), tmp_path / "p2", workers=2, **SETTINGS)
    monkeypatch.setattr(prep, "BATCH_CHARS", 10**6)  # the whole corpus in one worker task
    one_batch = prepare(str(corpus["jsonl"]), tmp_path / "p3", workers=2, **SETTINGS)
    assert_same_dataset(out, prepared)
    assert_same_dataset(one_batch, prepared)


def test_fineweb_shaped_parquet_glob_and_hf_path_end_to_end(prepared, tmp_path):
    """The FineWeb path on local files: a glob of parquet shards, and the same through datasets."""
    repo = tmp_path / "sample" / "10BT"
    repo.mkdir(parents=True)
    for i in range(3):
        write_parquet(repo / f"{i:03d}_00000.parquet", DOCS[i * 40 : (i + 1) * 40])
    tok = str(prepared / "tokenizer.json")
    via_glob = prepare(str(repo / "*.parquet"), tmp_path / "glob", workers=2, tokenizer=tok, **SETTINGS)
    via_hf = prepare(f"hf:{tmp_path / 'sample'}", tmp_path / "hf", workers=2, tokenizer=tok, **SETTINGS)
    assert_same_dataset(via_glob, prepared)
    assert_same_dataset(via_hf, prepared)
    rows = TokenLoader(via_hf, "train", seq_len=64, batch_size=4, seed=0).batch(3)
    train_text = load_tokenizer(prepared).decode(split_tokens(prepared, "train").tolist())
    assert all(load_tokenizer(prepared).decode(r.tolist()) in train_text for r in rows)


def test_interrupted_prepare_resumes_to_the_same_shards(corpus, prepared, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    prepare(str(corpus["jsonl"]), out, workers=1, stop_after_shards=3, **SETTINGS)
    assert not (out / "meta.json").exists() and (out / STATE_FILE).exists()

    calls = []

    def crash_on_third_shard(*args, **kwargs):  # a crash in the middle of the second run
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write_shard(*args, **kwargs)

    write_shard = prep.write_shard
    monkeypatch.setattr(prep, "write_shard", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(corpus["jsonl"]), out, workers=2, **SETTINGS)
    monkeypatch.setattr(prep, "write_shard", write_shard)

    prepare(str(corpus["jsonl"]), out, workers=1, **SETTINGS)
    assert_same_dataset(out, prepared)
    assert not (out / STATE_FILE).exists()


def test_rerun_on_finished_output_is_a_noop(corpus, prepared, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    prepare(str(corpus["jsonl"]), prepared, workers=1, **SETTINGS)
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()} == before


def test_rerun_with_other_settings_is_an_error(corpus, prepared):
    with pytest.raises(ValueError, match="other settings"):
        prepare(str(corpus["jsonl"]), prepared, workers=1, **{**SETTINGS, "vocab_size": 300})


def test_token_budget_and_pretrained_tokenizer(corpus, prepared, tmp_path):
    out = prepare(
        str(corpus["jsonl"]), tmp_path / "budget", workers=2, tokenizer=str(prepared / "tokenizer.json"),
        tokens=5000, val_tokens=600, shard_tokens=1500,
    )
    meta = load_meta(out)
    assert [s["tokens"] for s in meta["shards"]] == [1500, 1500, 1500, 500]
    assert meta["settings"]["vocab_size"] is None and meta["vocab_size"] == load_meta(prepared)["vocab_size"]
    np.testing.assert_array_equal(split_tokens(out, "train"), split_tokens(prepared, "train")[:5000])


def test_val_budget_larger_than_the_source_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="smaller --val-tokens"):
        prepare(str(corpus["jsonl"]), tmp_path / "big", workers=1, **{**SETTINGS, "val_tokens": 10**8})


def test_bad_settings_are_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="shard_tokens"):
        prepare(str(corpus["jsonl"]), tmp_path / "x", shard_tokens=0)
    with pytest.raises(FileNotFoundError, match="no such file"):
        prepare(str(tmp_path / "missing.jsonl"), tmp_path / "y")
    with pytest.raises(KeyError, match="'body'.*set --text-field"):
        prepare(str(corpus["parquet"]), tmp_path / "z", text_field="body", **SETTINGS)


def test_prepare_data_of_a_run_data_section_and_the_files_dataset_dir_names(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MUONLAB_CACHE", str(tmp_path / "cache"))
    src = str(corpus["jsonl"])
    section = asdict(DataSection(source=src, vocab_size=320, val_tokens=600))
    dataset = prepare_data(section)
    assert dataset.path == config_settings(section).dataset_dir() == dataset_dir_for(src, vocab_size=320,
                                                                                     val_tokens=600)
    assert {p.name for p in (dataset.manifest, dataset.tokenizer, dataset.token_counts)} == {
        "meta.json", "tokenizer.json", "token_counts.npy"}
    assert dataset.read_meta() == dataset.load_meta() == load_meta(dataset.path)
    np.testing.assert_array_equal(dataset.counts(), np.load(dataset.path / "token_counts.npy"))
    assert prepare_data({**section, "dir": str(dataset.path)}) == DatasetDir(dataset.path)  # used as it is
    assert DatasetDir(tmp_path / "none").read_meta() is None


def test_ensure_prepared_uses_the_cache_dir_keyed_by_settings(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MUONLAB_CACHE", str(tmp_path / "cache"))
    src = str(corpus["jsonl"])
    path = dataset_dir_for(src, **SETTINGS)
    assert path.parent == tmp_path / "cache" / "datasets"
    assert dataset_dir_for(src, **{**SETTINGS, "vocab_size": 300}) != path
    settings = make_settings(src, **SETTINGS)
    assert ensure_prepared(settings, workers=1) == path and (path / "meta.json").exists()
    assert ensure_prepared(make_settings(src), data_dir=path) == path  # an existing dataset is used as it is


def test_bios_source_is_training_only(tmp_path):
    bios = {"n_people": 8, "n_groups": 2, "max_exposures": 2, "seed": 3}
    out = prepare("bios", tmp_path / "bios", workers=1, vocab_size=300, bios=bios)
    meta = load_meta(out)
    assert meta["bios"] == asdict(BiosConfig(**bios))  # every field, for the QA eval to rebuild it
    assert meta["val_tokens"] == 0 and meta["val_shards"] == []
    tok = load_tokenizer(out)
    texts = [tok.decode(d[:-1].tolist()) for d in split_docs(split_tokens(out, "train"), meta["eos_id"])]
    assert texts == list(documents(BiosConfig(**bios)))


def test_bios_heldout_biographies_are_the_validation_split_and_leave_training_unchanged(tmp_path):
    bios = {"n_people": 8, "n_groups": 2, "max_exposures": 2, "seed": 3}
    plain = prepare("bios", tmp_path / "plain", workers=1, vocab_size=300, bios=bios)
    out = prepare("bios", tmp_path / "heldout", workers=1, vocab_size=300, bios={**bios, "heldout": 2})
    meta = load_meta(out)
    assert meta["val_documents"] == 16 and meta["val_tokens"] > 0
    tok = load_tokenizer(out)
    texts = [tok.decode(d[:-1].tolist()) for d in split_docs(split_tokens(out, "val"), meta["eos_id"])]
    assert texts == list(heldout_documents(BiosConfig(**bios, heldout=2)))
    # the tokenizer is fit on training text only, so the training tokens are those of the plain dataset
    assert (out / "tokenizer.json").read_bytes() == (plain / "tokenizer.json").read_bytes()
    assert np.array_equal(split_tokens(out, "train"), split_tokens(plain, "train"))
    assert TokenLoader(out, "val", seq_len=16, batch_size=2, seed=0).batch(0).shape == (2, 17)


def test_bos_starts_every_document(corpus, tmp_path):
    out = prepare(str(corpus["jsonl"]), tmp_path / "b", workers=1, bos=True, **{**SETTINGS, "val_tokens": 0})
    meta = load_meta(out)
    docs = split_docs(split_tokens(out, "train"), meta["eos_id"])
    assert meta["bos_id"] is not None and meta["bos_id"] != meta["eos_id"] and len(docs) == len(DOCS)
    assert all(d[0] == meta["bos_id"] and (d[1:] != meta["bos_id"]).all() for d in docs)
    assert load_tokenizer(out).decode(docs[0][1:-1].tolist()) == DOCS[0]


def test_cli(corpus, tmp_path, capsys):
    args = ["--source", str(corpus["jsonl"]), "--vocab-size", "320", "--val-tokens", "6e2", "--workers", "1"]
    main([*args, "--shard-tokens", "1.5e3", "--out", str(tmp_path / "cli")])
    assert "prepared" in capsys.readouterr().out
    assert len(load_meta(tmp_path / "cli")["shards"]) > 10
    with pytest.raises(SystemExit, match="no such file"):
        main(["--source", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "cli2")])


def test_cache_directories_of_existing_datasets_do_not_move():
    """The settings' key names the cache directory: the same settings must keep finding their dataset."""
    assert dataset_dir_for("builtin:shakespeare").name == "builtin-shakespeare-54c9c49fa3d1"
    fineweb = dataset_dir_for("hf:HuggingFaceFW/fineweb-edu:sample-10BT", tokenizer="gpt2", tokens=5.3e9,
                              val_tokens=1.1e7)
    assert fineweb.name == "hf-HuggingFaceFW-fineweb-edu-sample-10BT-853637ad897c"


def test_bad_input_is_a_user_error(corpus, prepared, tmp_path):
    with pytest.raises(UserError, match="shard_tokens"):
        prepare(str(corpus["jsonl"]), tmp_path / "x", shard_tokens=0)
    with pytest.raises(MissingFileError, match="no such file"):
        prepare(str(tmp_path / "missing.jsonl"), tmp_path / "y")
    with pytest.raises(UserError, match=r"^\S+ has no field 'body'"):  # unquoted, unlike a plain KeyError
        prepare(str(corpus["parquet"]), tmp_path / "z", text_field="body", **SETTINGS)
    with pytest.raises(UserError, match="other settings"):
        prepare(str(corpus["jsonl"]), prepared, workers=1, **{**SETTINGS, "vocab_size": 300})


def test_cli_prints_a_user_error_as_one_line(corpus, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", str(corpus["parquet"]), "--text-field", "body", "--out", str(tmp_path / "o")])
    message = exit_info.value.code  # a string: printed to stderr, exit status 1
    assert message.startswith(f"error: {corpus['parquet']} has no field 'body'") and "\n" not in message


@pytest.mark.parametrize("error", [RuntimeError, KeyError, TypeError, ValueError, FileNotFoundError])
def test_cli_keeps_the_traceback_of_anything_but_a_user_error(corpus, tmp_path, monkeypatch, error):
    def broken(*args, **kwargs):
        raise error("an internal invariant failed")

    monkeypatch.setattr("data.prepare.prepare_dataset", broken)
    with pytest.raises(error, match="an internal invariant failed"):
        main(["--source", str(corpus["jsonl"]), "--out", str(tmp_path / "o")])


def test_cache_root_follows_muonlab_cache_then_xdg(monkeypatch, tmp_path):
    from data.cache import cache_dir

    monkeypatch.delenv("MUONLAB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "muonlab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "muonlab"
    monkeypatch.setenv("MUONLAB_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
