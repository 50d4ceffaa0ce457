"""The wheels the GPU check needs beyond a GPU node's own packages, fetched on a networked machine and
installed offline on the node, only where an import is missing.

    python -m benchmarks.wheelhouse download [--dir .whl]                 # bash benchmarks/wheelhouse.sh
    python -m benchmarks.wheelhouse install --target DIR [--dir .whl]     # run by benchmarks/gpu_check.sh

A node typically has torch, transformers, accelerate and the scientific stack, but not omegaconf
(muonlab's config), wandb or datasets. The check imports neither wandb nor datasets (train.py imports
them only to log to wandb or read a hub dataset), so the wheelhouse carries omegaconf and the small
pure-Python packages the check's output uses, each pinned to one version with its dependencies named:
cp312 manylinux x86_64 or pure-Python wheels, for the node's Python 3.12. omegaconf 2.4 is a pure-Python
wheel (2.3 needs an sdist and a build step). `install` prints where every package the check imports
came from: the node, or the wheelhouse.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = Path(os.environ.get("MUONLAB_WHEELHOUSE", ROOT / ".whl"))
PYTHON_VERSION = "3.12"  # the node's
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


@dataclass(frozen=True)
class Wheel:
    """A package carried as a wheel: its distribution name, the module it provides, its pinned version
    and the carried packages it needs."""

    name: str
    module: str
    version: str
    needs: tuple[str, ...] = ()

    @property
    def file_prefix(self) -> str:
        """How its wheel's file name starts (PEP 427: the name normalized, then the version)."""
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-"


WHEELS = (
    Wheel("omegaconf", "omegaconf", "2.4.0", needs=("PyYAML",)),
    Wheel("PyYAML", "yaml", "6.0.3"),
    Wheel("tqdm", "tqdm", "4.70.1"),
    Wheel("rich", "rich", "15.0.0", needs=("markdown-it-py", "Pygments")),
    Wheel("markdown-it-py", "markdown_it", "4.3.0", needs=("mdurl",)),
    Wheel("mdurl", "mdurl", "0.1.2"),
    Wheel("Pygments", "pygments", "2.20.0"),
)
# What the check imports that no wheel here replaces: the node must have these.
FROM_NODE = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "pytest")


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # an import hook may refuse it outright
        return False


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def download(directory: Path) -> int:
    """Fetch every wheel into `directory` (needs a package index)."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
           *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(directory),
           *(f"{w.name}=={w.version}" for w in WHEELS)]
    code = subprocess.run(cmd).returncode
    if code == 0:
        files = sorted(p.name for p in directory.glob("*.whl"))
        print(f"{len(files)} wheels in {directory}: {', '.join(files)}")
        print(f"carry {directory} to the node with the repository; bash benchmarks/gpu_check.sh installs "
              "from it what is missing there")
    return code


def install(directory: Path, target: Path) -> int:
    """Install, offline into `target`, the wheel of every carried package that does not import here;
    print where each package comes from. 1 (one error line) if a package is neither here nor carried."""
    missing = [w for w in WHEELS if not importable(w.module)]
    absent = [m for m in FROM_NODE if not importable(m)]
    if absent:
        print(f"error: {', '.join(absent)} not importable with {sys.executable}; the GPU check needs the "
              "node's own torch stack (set PYTHON to the interpreter that has it)", file=sys.stderr)
        return 1
    files = {}
    for wheel in missing:
        found = sorted(directory.glob(f"{wheel.file_prefix}*.whl")) if directory.is_dir() else []
        if not found:
            print(f"error: {wheel.module} is not importable here and {directory} has no {wheel.name} "
                  f"{wheel.version} wheel; run `bash benchmarks/wheelhouse.sh` on a machine with a package "
                  "index and carry .whl/ with the repository", file=sys.stderr)
            return 1
        files[wheel.name] = found[0]
    if files:
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
               "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target),
               *map(str, files.values())]
        code = subprocess.run(cmd).returncode
        if code != 0:
            print(f"error: pip could not install {', '.join(files)} from {directory}", file=sys.stderr)
            return code
    lines = [f"{name} {installed_version(name)}: the node's" for name in FROM_NODE]
    lines += [f"{w.name} {w.version}: wheelhouse ({files[w.name].name}, installed into {target})"
              if w.name in files else f"{w.name} {installed_version(w.name)}: the node's" for w in WHEELS]
    print("\n".join(f"package {line}" for line in lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wheelhouse",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("download", "install"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="the wheelhouse (default .whl/ at the repository root, or $MUONLAB_WHEELHOUSE)")
    parser.add_argument("--target", type=Path,
                        help="install: the folder to install into (put it on PYTHONPATH)")
    args = parser.parse_args(argv)
    if args.action == "download":
        return download(args.dir)
    if args.target is None:
        parser.error("install needs --target DIR")
    return install(args.dir, args.target)


if __name__ == "__main__":
    sys.exit(main())
