"""train.py in forked children of a preloaded server, killed or failed on purpose at chosen moments.

A fork of a process that has already imported torch and muonlab starts a run in milliseconds
instead of seconds, so the randomized crash test can afford dozens of runs. Faults are injected in
the child only, by wrapping the library calls muonlab writes through (nothing in muonlab knows):

- ("kill", point, n): SIGKILL at the n-th `point` of the run:
  "metrics"    half of a metrics.jsonl line written;
  "checkpoint" a checkpoint's torch.save'd file (optimizer, RNG) half written;
  "marker"     a checkpoint's loop_state.json written but not yet in place;
  "rename"     a complete temporary checkpoint not yet renamed to step_<N>;
  "prune"      half of an old checkpoint deleted by the keep-last-N rule.
- ("enospc", point, n): the n-th write fails as on a full disk: "checkpoint" (torch.save's own
  RuntimeError, after half the file), "metrics" and "summary" (the kernel's ENOSPC, from /dev/full).
- ("stall", "metrics", n, path): the n-th metrics.jsonl append waits until `path` exists.
"""

from __future__ import annotations

import builtins
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILL_POINTS = ("metrics", "checkpoint", "marker", "rename", "prune")

_ticks: Counter[str] = Counter()


def _context() -> multiprocessing.context.BaseContext:
    # The server imports its preload before it sees the parent's sys.path: PYTHONPATH finds them.
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=path,
                      MUONLAB_CACHE=os.environ.get("MUONLAB_CACHE", str(ROOT / ".cache")))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["train", "fault_runs", "torch._dynamo"])
    return ctx


def start(argv: list[str], log: Path, fault: tuple | None = None,
          counts: Path | None = None) -> multiprocessing.process.BaseProcess:
    """Start train.py `argv` in a forked child (stdout and stderr to `log`), with `fault` injected;
    `counts`: where the child writes how often each kill point occurred (when it exits normally)."""
    proc = _context().Process(target=_child, args=(argv, str(log), fault, counts and str(counts)))
    proc.start()
    return proc


def run(argv: list[str], log: Path, fault: tuple | None = None, counts: Path | None = None) -> int:
    """Run train.py `argv` to its end; returns the exit code (-9: killed)."""
    proc = start(argv, log, fault, counts)
    proc.join()
    return proc.exitcode


def run_killed_after(argv: list[str], log: Path, seconds: float) -> int:
    """Run train.py `argv` and SIGKILL it after `seconds` unless it ended before."""
    proc = start(argv, log)
    proc.join(seconds)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return proc.exitcode


def timed(argv: list[str], log: Path, counts: Path) -> float:
    """Seconds an uninterrupted run takes (fork to exit)."""
    began = time.perf_counter()
    assert run(argv, log, counts=counts) == 0, log.read_text()[-3000:]
    return time.perf_counter() - began


# -- in the child ---------------------------------------------------------------------------


def _child(argv: list[str], log: str, fault: tuple | None, counts: str | None) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(ROOT)
    import torch

    torch.set_num_threads(1)
    _install(fault)
    import train

    try:
        code = train.main(argv)
    except BaseException:  # noqa: BLE001  (a bug: its traceback goes to the log)
        traceback.print_exc()
        code = 1
    if counts:
        Path(counts).write_text(json.dumps(_ticks))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _occurs(point: str, fault: tuple | None) -> str | None:
    """Count one occurrence of `point`; the kind of `fault` if it strikes at this one, else None."""
    _ticks[point] += 1
    return fault[0] if fault is not None and fault[1:3] == (point, _ticks[point]) else None


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _in_temporary_checkpoint(path: object) -> bool:
    return Path(str(path)).parent.name.startswith(".tmp_step_")


def _install(fault: tuple | None) -> None:
    import pathlib

    import torch

    path_open, path_rename, torch_save, rmtree, replace, builtin_open = (
        pathlib.Path.open, pathlib.Path.rename, torch.save, shutil.rmtree, os.replace, builtins.open)

    def open_(self: pathlib.Path, mode: str = "r", *args: object, **kwargs: object):
        if self.name != "metrics.jsonl" or "a" not in mode:
            return path_open(self, mode, *args, **kwargs)
        kind = _occurs("metrics", fault)
        if kind == "enospc":
            return builtin_open("/dev/full", "a")
        while kind == "stall" and not Path(fault[3]).exists():
            time.sleep(0.01)
        f = path_open(self, mode, *args, **kwargs)
        return _HalfThenDie(f) if kind == "kill" else f

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        torch_save(obj, f, *args, **kwargs)
        if _in_temporary_checkpoint(f) and (kind := _occurs("checkpoint", fault)) is not None:
            os.truncate(f, os.path.getsize(f) // 2)
            if kind == "kill":
                _die()
            # what torch.save raises on a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    def rename(self: pathlib.Path, target: object) -> pathlib.Path:
        if self.name.startswith(".tmp_step_") and _occurs("rename", fault) == "kill":
            _die()
        return path_rename(self, target)

    def remove_tree(path: object, *args: object, **kwargs: object) -> None:
        p = Path(str(path))
        if (p.parent.name == "checkpoints" and p.name.startswith("step_") and p.is_dir()
                and _occurs("prune", fault) == "kill"):
            for file in sorted(p.iterdir())[::2]:
                file.unlink()
            _die()
        rmtree(path, *args, **kwargs)

    def replace_(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if (Path(str(dst)).name == "loop_state.json" and _in_temporary_checkpoint(dst)
                and _occurs("marker", fault) == "kill"):
            _die()
        replace(src, dst, *args, **kwargs)

    def open_builtin(file: object, mode: str = "r", *args: object, **kwargs: object):
        if Path(str(file)).name.startswith(".summary.json.tmp") and _occurs("summary", fault) == "enospc":
            return builtin_open("/dev/full", mode)
        return builtin_open(file, mode, *args, **kwargs)

    pathlib.Path.open, pathlib.Path.rename, torch.save = open_, rename, save
    shutil.rmtree, os.replace, builtins.open = remove_tree, replace_, open_builtin


class _HalfThenDie:
    """A file whose first write writes half its data, reaches the disk, and kills the process."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self) -> _HalfThenDie:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: str) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        _die()
        return 0
