"""Every command in README.md and docs/*.md is executed here, cheaply, so that an example that rots
fails the tests: train.py with --dry-run on a small fixture corpus (any launcher stripped: the
arguments are what can rot), `python -m ablations run` with --dry-run, reports against synthetic
run directories, comparisons of the committed studies, the theory CLIs at tiny sizes. The commands
that cannot run here are listed in NOT_RUN with the reason and the test that covers them instead."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from test_report_limits import make_grid
from test_train import corpus  # noqa: F401  (fixture)

from ablations.__main__ import main as ablations_main
from theory import assoc_memory, scaling
from train import main as train_main
from training.runs import main as runs_main

pytestmark = pytest.mark.slow  # ~40 s: every documented train.py configuration is built

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = {
    "pip install": "sets up the environment",
    "python -m pytest": "the test suite itself",
    "sbatch": "SLURM; its script is built by `ablations run ... --launcher slurm --dry-run` (run here)",
    "srun": "SLURM; the launch line of that script (tests/test_ablations.py checks it)",
    "huggingface-cli": "downloads FineWeb",
    "python -m data.prepare": "prepares FineWeb (5.3B tokens); the CLI runs in tests/test_data_prepare.py",
    "python -m metrics.spectra": "needs trained runs; tests/test_spectra.py runs it on one",
    "python -m training.evaluate": "a placeholder run (runs/<name>); tests/test_trust.py evaluates real runs",
    "python -m training.export": "a placeholder run (runs/<name>); tests/test_hf.py exports real runs",
    "bash benchmarks/wheelhouse.sh": "downloads wheels from a package index (tests/test_gpu_check.py)",
    "bash benchmarks/gpu_check.sh": "needs a GPU; tests/test_gpu_check.py runs it with --cpu-smoke",
}
# Appended to every train.py command: the fixture corpus and a batch it can fill. The model, routing
# and every other key stay as documented.
THEORY_SIZES = {
    "theory.assoc_memory": ["--K", "8", "--steps", "30"],
    "theory.scaling": ["--K", "16", "--groups", "4", "--steps", "50", "--Ks", "8,16", "--horizons", "20,40",
                       "--horizon-K", "16", "--no-plots"],
}


def doc_commands() -> list[str]:
    """The commands of every fenced bash block, continuation lines joined and `&&` chains split."""
    commands = []
    for path in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), re.DOTALL):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split("  #")[0].strip()  # a trailing comment
                if line and not line.startswith(("#", "[")):  # "[" continues a synopsis (docs/data.md)
                    commands += [c.strip() for c in line.split("&&")]
    return commands


def reason_not_run(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


COMMANDS = doc_commands()


@pytest.fixture(scope="module")
def fixture_args(corpus, tmp_path_factory) -> list[str]:  # noqa: F811
    data = tmp_path_factory.mktemp("prepared") / "ds"
    return [f"data.source={corpus}/*.txt", f"data.dir={data}", "data.tokenizer=null", "data.vocab_size=512",
            "data.val_tokens=8192", "data.tokens=null", "train.seq_len=32", "train.batch_size=8",
            "train.micro_batch_size=null", "train.eval_tokens=4096"]


def run_command(tokens: list[str], fixture_args: list[str], tmp: Path) -> int:
    """Run one documented command the cheap way (from the repository root, the caller's cwd); its exit
    code."""
    if "train.py" in tokens:  # any launcher: python, accelerate launch, torchrun
        args = tokens[tokens.index("train.py") + 1:]
        if "--out" in args:
            args[args.index("--out") + 1] = str(tmp / "routing.json")
        return train_main([*args, "--dry-run", *fixture_args])
    module, args = tokens[2], tokens[3:]
    if module == "ablations" and args[0] == "run":
        return ablations_main([*args, *([] if "--dry-run" in args else ["--dry-run"])])
    if module == "ablations" and args[0] == "compare":  # the committed studies; written under tmp
        return ablations_main([*args, "--out", str(tmp / "compare")])
    if module == "ablations" and args[0] == "report":
        runs = make_grid(tmp / "runs" / Path(args[1]).name, [0, 20, 40, 60, 80, 100])
        return ablations_main(["report", str(runs), *args[2:]])
    if module == "training.runs":  # in a directory whose runs/ holds a grid
        make_grid(tmp / "runs" / "smoke", [0, 50, 100])
        os.chdir(tmp)
        return runs_main(args)
    if module in THEORY_SIZES:
        args[args.index("--out") + 1] = str(tmp / "out")
        (assoc_memory if module == "theory.assoc_memory" else scaling).main([*args, *THEORY_SIZES[module]])
        return 0
    raise AssertionError(f"no way to run {' '.join(tokens)!r}: add it here or to NOT_RUN with the reason")


@pytest.mark.parametrize("command", [c for c in COMMANDS if reason_not_run(c) is None])
def test_documented_command_runs(command, fixture_args, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands run from the repository root
    assert run_command(shlex.split(command), fixture_args, tmp_path) == 0, command


def test_every_reason_not_to_run_is_still_needed():
    assert all(any(c.startswith(prefix) for c in COMMANDS) for prefix in NOT_RUN)
    assert len([c for c in COMMANDS if reason_not_run(c) is None]) >= 25
