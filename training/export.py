"""`python -m training.export export RUN_DIR_OR_CHECKPOINT OUT_DIR`: a run's checkpoint as a transformers
directory that `AutoModelForCausalLM.from_pretrained(OUT_DIR)` (and `AutoTokenizer`) load.

The conversion itself is `model.hf.to_hf`; this module finds the checkpoint, the run's config and its
tokenizer through the run directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.cli import ExitCode, run_main
from common.rundir import RunDir
from data.dataset import DatasetDir
from data.prepare import config_settings
from model.hf import to_hf
from training.checkpoint import load_weights


def run_tokenizer(run: RunDir, run_cfg: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """(tokenizer file, dataset manifest) of a run: the copies in its run directory, else those of
    `data.dir` or of the cache directory train.py derived from the data settings (runs made before
    run directories kept them); None when none has one."""
    if run.tokenizer.is_file():
        meta = json.loads(run.data_manifest.read_text()) if run.data_manifest.is_file() else {}
        return run.tokenizer, meta
    data = run_cfg.get("data") or {}
    candidates = []
    if data.get("dir"):
        candidates.append(DatasetDir(data["dir"]))
    elif data.get("source"):
        # Settings this version of data/ does not understand mean exporting without the tokenizer, not
        # failing the export.
        with contextlib.suppress(TypeError, ValueError):
            candidates.append(DatasetDir(config_settings(data).dataset_dir()))
    for dataset in candidates:
        if dataset.tokenizer.is_file():
            return dataset.tokenizer, dataset.read_meta() or {}
    return None


def _save_tokenizer(tokenizer_file: Path, meta: dict[str, Any], out_dir: Path) -> None:
    """Save the run's tokenizer for AutoTokenizer, its BOS/EOS tokens named where the manifest has them."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    special = {}
    for key, role in (("bos_id", "bos_token"), ("eos_id", "eos_token")):
        if meta.get(key) is not None:
            special[role] = tokenizer.convert_ids_to_tokens(meta[key])
    tokenizer.add_special_tokens(special)
    tokenizer.save_pretrained(out_dir)


def export(src: str | Path, out_dir: str | Path) -> str:
    """Convert a run's newest (or the given) checkpoint to a transformers directory; returns a summary."""
    out_dir = Path(out_dir)
    # disable=None: a bar on a terminal, silent in logs; the context closes it before any error line.
    with tqdm(total=3, desc="export", unit="stage", disable=None) as stages:
        model, run_cfg, run, ckpt = load_weights(src)
        stages.update()
        tokenizer = run_tokenizer(run, run_cfg)
        meta = tokenizer[1] if tokenizer else {}
        hf_model = to_hf(model, bos_token_id=meta.get("bos_id"), eos_token_id=meta.get("eos_id"))
        stages.update()
        hf_model.save_pretrained(out_dir)
        if tokenizer is not None:
            _save_tokenizer(tokenizer[0], meta, out_dir)
        stages.update()
    tokenizer_note = "with tokenizer" if tokenizer is not None else "without tokenizer (none found)"
    return (
        f"exported {ckpt} ({model.num_params() / 1e6:.1f}M params) as {type(hf_model).__name__} "
        f"to {out_dir}, {tokenizer_note}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a transformers checkpoint directory")
    exp.add_argument("src", help="runs/<name> (newest checkpoint) or runs/<name>/checkpoints/step_<N>")
    exp.add_argument("out_dir", help="output directory for save_pretrained")
    args = parser.parse_args(argv)
    def body() -> int:
        print(export(args.src, args.out_dir))
        return ExitCode.OK

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
