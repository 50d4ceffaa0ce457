"""Tokenizers: train a byte-level BPE on a sample of the corpus, or load a pretrained one."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from common.errors import MissingFileError, UserError
from common.files import write_text

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|beginoftext|>"
# Names that pretrained tokenizers use for their end/begin-of-document tokens.
EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>")
BOS_CANDIDATES = (BOS_TOKEN, "<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
FILE_NAME = "tokenizer.json"


def train_bpe(texts: Iterable[str], vocab_size: int, *, bos: bool = False) -> Tokenizer:
    """A byte-level BPE (GPT-2 style: any byte sequence round-trips) with ``vocab_size`` entries,
    counting the special tokens: ``<|endoftext|>`` (id 0) and, with ``bos``, ``<|beginoftext|>``."""
    specials = [EOS_TOKEN, BOS_TOKEN] if bos else [EOS_TOKEN]
    if vocab_size < 256 + len(specials):
        raise UserError(f"vocab_size {vocab_size} too small: byte-level BPE needs >= {256 + len(specials)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_pretrained(name_or_path: str) -> Tokenizer:
    """A tokenizer.json file, a directory holding one, or a Hugging Face hub name (e.g. ``gpt2``).

    Hub lookups go through ``huggingface_hub`` (its cache, token and HF_HUB_OFFLINE apply); a repo
    without a tokenizer.json is converted by transformers' AutoTokenizer.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir() or path.suffix == ".json":
        return load_tokenizer(path)
    from huggingface_hub import hf_hub_download

    try:
        return Tokenizer.from_file(hf_hub_download(name_or_path, "tokenizer.json"))
    except Exception as hub_error:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name_or_path).backend_tokenizer
        except Exception as e:
            raise UserError(
                f"could not load tokenizer {name_or_path!r}: not a tokenizer.json path and the hub "
                f"lookup failed ({type(hub_error).__name__}). Give a local tokenizer.json, or omit "
                f"data.tokenizer (python -m data.prepare: --tokenizer) to train a BPE."
            ) from e


def load_tokenizer(dir_or_path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a prepared dataset directory, or a tokenizer.json file."""
    path = Path(dir_or_path).expanduser()
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise MissingFileError(f"no tokenizer at {path}; prepare the dataset first (python -m data.prepare)")
    return Tokenizer.from_file(str(path))


def special_ids(tok: Tokenizer, *, bos: bool = False) -> tuple[int, int | None]:
    """(eos_id, bos_id): the document separator and, when ``bos`` is asked for, the BOS token."""
    eos_id = _first_id(tok, EOS_CANDIDATES)
    if eos_id is None:
        raise UserError(f"tokenizer has none of the end-of-text tokens {EOS_CANDIDATES}; use another one")
    if not bos:
        return eos_id, None
    bos_id = _first_id(tok, BOS_CANDIDATES)
    if bos_id is None or bos_id == eos_id:
        raise UserError(
            f"tokenizer has no BOS token distinct from its EOS (looked for {BOS_CANDIDATES}); drop --bos "
            "(documents are already separated by EOS, and the loader can align windows to it)"
        )
    return eos_id, bos_id


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> Path:
    """Write ``tokenizer.json`` into ``out_dir`` atomically."""
    path = out_dir / FILE_NAME
    write_text(path, tok.to_str(pretty=True))  # what tok.save(path) writes, but atomically
    return path


def _first_id(tok: Tokenizer, candidates: tuple[str, ...]) -> int | None:
    for token in candidates:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    return None
