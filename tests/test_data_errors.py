"""Bad input anywhere in data/ is a UserError (one `error:` line at the command line); bugs are not."""

from __future__ import annotations

import pytest

import data.bios
from common.errors import MissingFileError, UserError
from data.bios import BiosConfig
from data.loader import TokenLoader, check_vocab
from data.manifest import load_meta
from data.shards import read_shard
from data.sources import iter_documents, parse_source
from data.tokenizer import load_tokenizer, train_bpe


def test_bad_sources_are_user_errors(tmp_path):
    with pytest.raises(MissingFileError, match="no such file"):
        parse_source(str(tmp_path / "missing.jsonl"))
    for spec in ("builtin:homer", "hf:", "bios+"):
        with pytest.raises(UserError):
            parse_source(spec)
    (tmp_path / "a.jsonl").write_text('{"body": "x", "score": 1.5}\n')
    for field in ("text", "score"):  # missing; not a string
        with pytest.raises(UserError, match="--text-field"):
            list(iter_documents(parse_source(str(tmp_path / "a.jsonl"), text_field=field)))


def test_bad_files_and_settings_are_user_errors(tmp_path):
    with pytest.raises(MissingFileError, match="not a prepared dataset"):
        load_meta(tmp_path)
    with pytest.raises(MissingFileError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "x.bin").write_bytes(b"not a shard")
    with pytest.raises(UserError, match="bad magic"):
        read_shard(tmp_path / "x.bin")
    with pytest.raises(UserError, match="too small"):
        train_bpe(["text"], 100)
    with pytest.raises(UserError, match="n_groups"):
        BiosConfig(n_groups=0)
    with pytest.raises(UserError, match="model.vocab_size"):
        check_vocab({"vocab_size": 300, "tokenizer": "bpe", "source": "s"}, 256)


def test_misuse_by_code_is_not_a_user_error(tmp_path):
    """A wrong argument from a caller is a bug to fix in the code, not in the user's input."""
    with pytest.raises(ValueError) as info:
        TokenLoader(tmp_path, "test", seq_len=4, batch_size=1)
    assert not isinstance(info.value, UserError)


def test_bios_cli_prints_a_user_error_as_one_line():
    with pytest.raises(SystemExit) as exit_info:
        data.bios.main(["n_groups=0"])
    assert exit_info.value.code.startswith("error: data.bios needs 1 <= n_groups (0)")


def test_bios_cli_keeps_the_traceback_of_anything_but_a_user_error(monkeypatch):
    def broken(cfg):
        raise RuntimeError("an internal invariant failed")

    monkeypatch.setattr(data.bios, "group_exposures", broken)
    with pytest.raises(RuntimeError, match="an internal invariant failed"):
        data.bios.main(["n_people=16", "n_groups=2"])
