"""data.tokenizer: byte-level BPE training, special tokens, saving/loading, errors."""

from __future__ import annotations

import pytest
from test_data_corpus import make_docs

from data.tokenizer import load_pretrained, load_tokenizer, save_tokenizer, special_ids, train_bpe

DOCS = make_docs(30)


def test_bpe_vocab_specials_and_round_trip(tmp_path):
    tok = train_bpe(DOCS, 400)
    assert tok.get_vocab_size() == 400
    assert special_ids(tok) == (0, None)
    for text in [*DOCS[:3], "unseen bytes: 日本語 🙂 \t\x00"]:  # byte-level: anything round-trips
        assert tok.decode(tok.encode(text).ids) == text
    assert len(tok.encode(DOCS[0]).ids) < len(DOCS[0].encode()) / 2  # merges were learned
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path).parent)
    assert loaded.encode(DOCS[1]).ids == tok.encode(DOCS[1]).ids
    assert load_pretrained(str(tmp_path / "tokenizer.json")).get_vocab_size() == 400


def test_bos_token():
    tok = train_bpe(DOCS, 400, bos=True)
    eos, bos = special_ids(tok, bos=True)
    assert (eos, bos) == (0, 1) and tok.id_to_token(bos) == "<|beginoftext|>"
    with pytest.raises(ValueError, match="no BOS token"):
        special_ids(train_bpe(DOCS, 400), bos=True)


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="too small"):
        train_bpe(DOCS, 200)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    # Offline mode (read by huggingface_hub at call time): the failure is immediate, with no network.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="could not load tokenizer 'no-such/tokenizer-xyz'"):
        load_pretrained("no-such/tokenizer-xyz")
