"""The driver of the GPU check: runs the parts, each in its own process, and packs what they wrote.

Each part runs in a child process in its own session: a fresh CUDA context, a hard limit (its own, cut
to what is left of the total budget), a crash that stays in its part; torch is imported only by the
parts that use it. A part writes `<part>.json` ({"part", "ok", "seconds", "error", "message",
"results"}); a part that runs out of time keeps what it saved with `Context.save_partial` (its record
then says `"partial": true`). After every part, `--out` gets `summary.json` and `gpu_check.tar.gz` (every
record, log and metrics file, and the summary): two files, whatever the number of parts, so all of it
comes back from a machine that returns only a few files, even if the check itself is cut short.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from benchmarks.gpu_check.context import ROOT, Context, child_env, tail
from benchmarks.gpu_check.modes import CPU_LIMIT_S, CPU_SMOKE, GPU, MIN_PART_S, Mode
from benchmarks.gpu_check.parts import PARTS
from common.files import write_json, write_with

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check"
ARCHIVE = "gpu_check.tar.gz"


def run_part(ctx: Context) -> int:
    """In the part's own process: run it, write <records>/<part>.json either way; 0 if it succeeded."""
    start = time.time()
    part = PARTS[ctx.part]
    record: dict[str, Any] = {"part": part.name, "what": part.what, "mode": ctx.mode.name}
    try:
        record.update(ok=True, error=None, message=None, results=part.run(ctx))
    except Exception as err:  # every failure is recorded; the driver goes on with the next part
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        record.update(ok=False, error=traceback.format_exc(), message=message,
                      results=partial(ctx.records, part.name))
    record["seconds"] = time.time() - start
    write_json(ctx.records / f"{part.name}.json", record)
    return 0 if record["ok"] else 1


def partial(records: Path, name: str) -> dict[str, Any]:
    """What a part saved before it failed or ran out of time ({} if nothing), marked as partial."""
    path = records / f"{name}.partial.json"
    return {**json.loads(path.read_text()), "partial": True} if path.is_file() else {}


def spawn_part(mode: Mode, records: Path, name: str, limit: float,
               argv_tail: Sequence[str]) -> dict[str, Any]:
    """Run one part in a child process in its own session; kill the whole session at the end (a timed-out
    part's trainers and compile workers too). Returns the part's record, written by it or for it."""
    path, log = records / f"{name}.json", records / f"{name}.log"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--run-part", name, "--deadline",
           str(time.time() + limit), *argv_tail]
    start = time.time()
    error = None
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(mode), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            error = f"timed out after {limit:.0f} s (the part's limit or the rest of the budget)"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if error is None and path.is_file():
        return json.loads(path.read_text())
    error = error or f"the part's process exited with code {proc.returncode} without writing {path.name}"
    error += f"\n--- end of {log.name} ---\n{tail(log)}"
    return failed(mode, records, name, error, time.time() - start)


def failed(mode: Mode, records: Path, name: str, error: str, seconds: float) -> dict[str, Any]:
    """Write and return the record of a part that could not write its own (with what it saved)."""
    record = {"part": name, "what": PARTS[name].what, "mode": mode.name, "ok": False, "error": error,
              "message": error.splitlines()[0], "results": partial(records, name), "seconds": seconds}
    write_json(records / f"{name}.json", record)
    return record


def environment(mode: Mode, records: dict[str, dict[str, Any]], sources: str | None) -> dict[str, Any]:
    """benchmarks.common's environment record, the attention kernels the train step saw, and where the
    packages came from (gpu_check.sh's wheelhouse report)."""
    import torch

    from benchmarks.common import environment as common_environment

    env = common_environment(torch.device(mode.device))
    env["cudnn"] = torch.backends.cudnn.version() if mode.device == "cuda" else None
    step = records.get("train_step_eager", {}).get("results", {})
    attention = step.get("attention") or {}
    env["attention_ops"] = attention.get("muonlab")
    env["flash_attention"] = {model: any("flash" in op for op in ops) for model, ops in attention.items()}
    env["package_sources"] = sources
    return env


def format_targets(targets: list[dict[str, Any]]) -> str:
    def one(t: dict[str, Any]) -> str:
        sign = ">=" if t["higher_is_better"] else "<="
        met = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        return f"{t['name']} {sign} {t['target']:g}: {met}"

    return "; ".join(one(t) for t in targets)


def summarize(mode: Mode, records: dict[str, dict[str, Any]], seconds: float, complete: bool,
              sources: str | None) -> dict[str, Any]:
    """The summary of the parts run so far."""
    parts = {}
    for name, rec in records.items():
        res = rec.get("results") or {}
        parts[name] = {"ok": rec["ok"], "seconds": rec["seconds"], "key": res.get("key"),
                       "partial": bool(res.get("partial")), "targets": res.get("targets", []),
                       "error": rec.get("message")}
    return {
        "mode": mode.name, "ok": all(p["ok"] for p in parts.values()), "complete": complete,
        "seconds": seconds, "budget_s": mode.budget_s, "environment": environment(mode, records, sources),
        "parts": parts, "targets": [t for p in parts.values() for t in p["targets"]],
    }


def publish(out: Path, records: Path, summary: dict[str, Any]) -> None:
    """summary.json in `out` and in the records, and every record packed into `out`/gpu_check.tar.gz
    (written aside and renamed: a check killed mid-pack leaves the previous archive)."""
    write_json(records / "summary.json", summary)
    write_json(out / "summary.json", summary)

    def pack(f: BinaryIO) -> None:
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            tar.add(records, arcname="gpu_check")

    write_with(out / ARCHIVE, pack)


def print_summary(summary: dict[str, Any], out: Path) -> None:
    from benchmarks.common import print_table

    parts = summary["parts"]
    print_table(
        f"GPU check ({summary['mode']}) on {summary['environment']['device_name']}, "
        f"{summary['seconds']:.0f} s; results in {out / 'summary.json'} and {out / ARCHIVE}",
        ["part", "ok", "s", "key figures", "targets"],
        [[name, ("yes" if p["ok"] else "FAILED") + (" (partial)" if p["partial"] else ""),
          f"{p['seconds']:.0f}", p["key"] if p["ok"] else (p["error"] or "")[:200],
          format_targets(p["targets"])]
         for name, p in parts.items()],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from benchmarks.common import split_choices

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description="The GPU check: every GPU measurement in one offline run.")
    parser.add_argument("--out", help=f"results folder (default $OUT, else {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="the reduced CPU mode: tiny sizes, no compile")
    parser.add_argument("--parts", help=f"comma list, run in this order (default: {', '.join(PARTS)})")
    parser.add_argument("--budget", type=float,
                        help="total seconds (GPU 480, CPU smoke 600); parts past it are recorded as not run")
    parser.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra train.py override for the real runs (repeatable)")
    parser.add_argument("--work", help="scratch folder for the real runs (default: a temporary one, removed)")
    parser.add_argument("--sources", help=argparse.SUPPRESS)  # gpu_check.sh's package-source report
    parser.add_argument("--run-part", choices=list(PARTS), help=argparse.SUPPRESS)  # the child's own part
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = split_choices(parser, "--parts", args.parts or ",".join(PARTS), tuple(PARTS))
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = CPU_SMOKE if args.cpu_smoke else GPU
    if args.run_part:
        work = Path(args.work)
        ctx = Context(mode, work / "records", work, args.deadline, args.run_part, tuple(args.train_arg))
        return run_part(ctx)
    import torch

    if mode.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run the reduced CPU check with --cpu-smoke", file=sys.stderr)
        return 2
    out = Path(args.out or os.environ.get("OUT") or DEFAULT_OUT).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or mode.budget_s
    work = Path(args.work or tempfile.mkdtemp(prefix="muonlab_gpu_check_")).resolve()
    records = work / "records"
    records.mkdir(parents=True, exist_ok=True)
    argv_tail = ["--work", str(work), *(["--cpu-smoke"] if args.cpu_smoke else []),
                 *(a for arg in args.train_arg for a in ("--train-arg", arg))]
    sources = args.sources
    if sources:
        (records / "package_sources.txt").write_text(sources)
    start = time.time()
    records_by_part: dict[str, dict[str, Any]] = {}
    try:
        for name in args.parts:
            left = start + budget - time.time()
            if left < MIN_PART_S:
                records_by_part[name] = failed(mode, records, name, f"not run: the {budget:.0f} s budget was "
                                               "spent", 0.0)
            else:
                print(f"[{time.time() - start:5.0f} s] {name}: {PARTS[name].what} ...", flush=True)
                limit = min(mode.limits.get(name, CPU_LIMIT_S), left)
                rec = records_by_part[name] = spawn_part(mode, records, name, limit, argv_tail)
                status = (rec.get("results") or {}).get("key") if rec["ok"] else f"FAILED: {rec['message']}"
                print(f"[{time.time() - start:5.0f} s] {name}: {status}", flush=True)
            complete = len(records_by_part) == len(args.parts)
            summary = summarize(mode, records_by_part, time.time() - start, complete, sources)
            publish(out, records, summary)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(summary, out)
    return 0 if summary["ok"] else 1


def read_archive(out: Path) -> dict[str, bytes]:
    """Every file of a check's gpu_check.tar.gz, by its path inside the archive (for tests and readers)."""
    with tarfile.open(out / ARCHIVE) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


__all__ = ["PARTS", "main", "parse_args", "read_archive"]
