"""Throughput of ``data.prepare`` (tokens/s) with 1 worker and with N workers.

Corpus: the Shakespeare training works repeated ``--repeat`` times as local .txt files (one
document per work), tokenized with a fixed byte-level BPE (trained once, outside the timing),
so the runs measure tokenization, packing and shard writing. Target: N workers reach at least
0.7 * N times the 1-worker rate.

    python benchmarks/bench_prepare.py [--repeat 4] [--workers 1 2] [--trials 3] [--vocab-size 4096]

Each worker count runs ``--trials`` times, interleaved, and the fastest run counts (on a shared
machine the others measure the neighbours). The CPU seconds of the main process and of the
workers are recorded too. Writes benchmarks/results/prepare.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo-root imports

from common.files import write_json  # noqa: E402
from data import shakespeare  # noqa: E402
from data.encode import usable_cpus  # noqa: E402
from data.manifest import load_meta  # noqa: E402
from data.prepare import prepare  # noqa: E402
from data.tokenizer import save_tokenizer, train_bpe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "prepare.json"
TARGET = 0.7


def make_corpus(root: Path, repeat: int) -> int:
    """Write the training works ``repeat`` times as .txt files; returns the characters written."""
    root.mkdir(parents=True, exist_ok=True)
    chars = 0
    for r in range(repeat):
        for i, text in enumerate(shakespeare.documents("train")):
            (root / f"{r:03d}_{i:03d}.txt").write_text(text)
            chars += len(text)
    return chars


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run(corpus: Path, tokenizer: Path, out: Path, workers: int) -> dict:
    """One prepare run: wall time, and CPU time of the main process and of the (joined) workers."""
    main0, workers0 = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    prepare(str(corpus), out, workers=workers, tokenizer=str(tokenizer), val_tokens=0, shard_tokens=10**7)
    seconds = time.perf_counter() - start
    main_cpu = _cpu_seconds(resource.RUSAGE_SELF) - main0
    workers_cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - workers0
    tokens = load_meta(out)["train_tokens"]
    return {
        "workers": workers,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds),
        "main_cpu_s": round(main_cpu, 3),
        "workers_cpu_s": round(workers_cpu, 3),
        "tokens_per_worker_cpu_s": round(tokens / workers_cpu),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=4, help="copies of the corpus (~4.6 MB each)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, usable_cpus()])
    p.add_argument("--trials", type=int, default=3, help="runs per worker count; the fastest counts")
    p.add_argument("--vocab-size", type=int, default=4096)
    a = p.parse_args()
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        root = Path(tmp)
        chars = make_corpus(root / "corpus", a.repeat)
        tokenizer = save_tokenizer(train_bpe(shakespeare.documents("train"), a.vocab_size), root)
        corpus = root / "corpus"
        trials = [[run(corpus, tokenizer, root / f"{w}_{t}", w) for w in a.workers] for t in range(a.trials)]
    rows = []
    for runs in zip(*trials, strict=True):  # the runs of one worker count
        best = max(runs, key=lambda r: r["tokens_per_s"])
        rows.append({**best, "trials_tokens_per_s": [r["tokens_per_s"] for r in runs]})
    base = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        if base:
            r["speedup"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            r["meets_target"] = r["speedup"] >= TARGET * r["workers"]
            # Per-token CPU cost relative to 1 worker: what parallelism costs, whatever the machine's load.
            r["cpu_efficiency"] = round(r["tokens_per_worker_cpu_s"] / base["tokens_per_worker_cpu_s"], 2)
    result = {
        "benchmark": "prepare",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "usable_cpus": usable_cpus(), "processor": platform.processor(),
                    "python": platform.python_version(), "load_average_at_start": load},
        "corpus": {"source": f"shakespeare train works x{a.repeat} (.txt)", "chars": chars},
        "tokenizer": f"byte-level BPE, vocab {a.vocab_size}",
        "target": f"N workers >= {TARGET} * N * (1 worker)",
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, result)
    print(f"\nprepare: {chars / 1e6:.1f} M chars, {result['tokenizer']}, {usable_cpus()} usable CPUs")
    print(f"{'workers':>8} {'tokens':>11} {'wall s':>8} {'tokens/s':>10} {'speedup':>8} {'target':>7} "
          f"{'main cpu s':>10} {'worker cpu s':>12} {'tok/worker-cpu-s':>16} {'cpu eff.':>8}")
    for r in rows:
        target = "" if "speedup" not in r else ("ok" if r["meets_target"] else "MISS")
        print(f"{r['workers']:>8} {r['tokens']:>11,} {r['seconds']:>8.2f} {r['tokens_per_s']:>10,} "
              f"{r.get('speedup', ''):>8} {target:>7} {r['main_cpu_s']:>10.2f} {r['workers_cpu_s']:>12.2f} "
              f"{r['tokens_per_worker_cpu_s']:>16,} {r.get('cpu_efficiency', ''):>8}")
    print(f"load average at start: {load} (wall-clock speedup needs idle cores)")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
