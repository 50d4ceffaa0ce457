"""What determines a prepared dataset: its settings, their cache key, and the cache directory they name."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError
from data.cache import cache_dir
from data.sources import bios_settings, has_bios, parse_source

DEFAULT_VOCAB_SIZE = 4096
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_VAL_TOKENS = 10_000_000
DEFAULT_TOKENIZER_SAMPLE_CHARS = 20_000_000


@dataclass(frozen=True)
class Settings:
    """Everything that determines the output; its hash names the cache directory.

    The field order is the order of ``meta.json``'s ``settings``: keep it."""

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

    def dataset_dir(self) -> Path:
        """The cache directory of the dataset these settings prepare."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.source).strip("-")[:48]
        return cache_dir() / "datasets" / f"{slug}-{self.key()}"


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
        if value is not None and not _is_whole(value, low):
            raise UserError(f"{name} must be an integer >= {low}, got {value}")
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


def _is_whole(value: Any, low: int) -> bool:
    """Whether ``value`` is a whole number >= ``low`` (5e9 is: counts may come as floats)."""
    try:
        return int(value) == value and value >= low
    except (TypeError, ValueError, OverflowError):  # a string, NaN or infinity
        return False
