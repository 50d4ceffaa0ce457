"""Shared helpers of the benchmark scripts: environment record, timing, peak memory, JSON and tables.

Timing is interleaved: every timed callable runs once per round, in an order that rotates from round
to round, so background load on a shared machine hits all contenders alike. Reported times are
medians over rounds, which shrugs off the occasional step slowed down by another process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.step_timer import synchronize

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU features that decide matmul speed per dtype (bf16 is native with avx512_bf16 / amx_bf16).
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_isa() -> list[str]:
    """The matmul-relevant instruction-set flags of this CPU (from /proc/cpuinfo; empty if unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    lines = text.splitlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return [flag for flag in _ISA_FLAGS if flag in flags]


def device_name(device: torch.device) -> str:
    """GPU name for CUDA devices, CPU model otherwise."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS_DIR.parent, capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict[str, Any]:
    """What a result depends on: device, versions, threads, load, commit and time (UTC)."""
    import transformers  # recorded because the peers come from it

    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device.type,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    device: torch.device | None = None,
    desc: str = "timing",
) -> dict[str, list[float]]:
    """Seconds per call of each callable, measured in interleaved rounds (A B C, B C A, C A B, ...).

    `warmup` untimed rounds come first (compilation, allocator and optimizer-state warm-up). The device
    is synchronized around every call so a time covers the work the call queued.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    with tqdm(total=(warmup + rounds) * len(names), desc=desc, unit="call", leave=False) as bar:
        for r in range(warmup + rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                if device is not None:
                    synchronize(device)
                start = time.perf_counter()
                fns[name]()
                if device is not None:
                    synchronize(device)
                if r >= warmup:
                    times[name].append(time.perf_counter() - start)
                bar.update()
    return times


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(values)


class PeakMemory:
    """Peak memory a process gains from `start()` on, in bytes (None where it cannot be read).

    CUDA: `torch.cuda.max_memory_allocated` (tensors only, no allocator cache). CPU (Linux): the peak
    resident set size (VmHWM, reset at `start()` through /proc/self/clear_refs) minus the RSS at
    `start()`, which counts tensors plus allocator slack. Memory freed earlier in the process may be
    reused without raising the RSS, so on CPU measure in a fresh process (`run_in_fresh_process`).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets the peak RSS to the current RSS
        self._base = _proc_status_bytes("VmRSS") or 0

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base
        high_water = _proc_status_bytes("VmHWM")
        return None if high_water is None else high_water - self._base


def _proc_status_bytes(key: str) -> int | None:
    """A memory field of /proc/self/status in bytes; None off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def run_in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a newly spawned Python process (for clean peak-memory readings); returns its result.

    `fn` must be a module-level function and its arguments and result picklable.
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def split_choices(
    parser: argparse.ArgumentParser, flag: str, value: str, choices: Sequence[str]
) -> list[str]:
    """A comma list of `choices`, in the order given, or a usage error (exit 2) naming `flag`."""
    picked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in picked if v not in choices]
    if unknown or not picked:
        parser.error(f"{flag}: unknown value(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(choices)}")
    return picked


def write_results(name: str, payload: Mapping[str, Any], out: str | Path | None = None) -> Path:
    """Write `payload` as JSON to `out` (default benchmarks/results/<name>_<device>.json).

    Returns the path written.
    """
    if out is None:
        device = payload.get("environment", {}).get("device", "cpu")
        out = RESULTS_DIR / f"{name}_{device}.json"
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def format_bytes(n: int | None) -> str:
    """'123.4 MiB' style, or 'n/a' for None."""
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout (cells formatted by the caller)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped to a file: do not squeeze the table into 80 columns
        console = Console(width=200)
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


def load_warning(env: Mapping[str, Any]) -> str | None:
    """A warning when other processes kept the CPUs busy (load above the core count), else None."""
    load, cores = os.getloadavg()[0], env["cpu_count"] or 1
    if max(load, env["load_avg_1m"]) <= cores:
        return None
    return (
        f"warning: load average {max(load, env['load_avg_1m']):.1f} on {cores} cores during the run: "
        "other processes competed for the CPUs, absolute times are inflated (ratios less so)"
    )


def describe_environment(env: Mapping[str, Any]) -> str:
    """One line naming the machine and versions, for table captions and summaries."""
    return (
        f"{env['device_name']} ({env['torch_threads']} threads, load {env['load_avg_1m']}), "
        f"torch {env['torch']}, transformers {env['transformers']}, {env['date_utc']}"
    )
