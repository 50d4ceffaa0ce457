"""The exit codes of every muonlab command, and the one wrapper that maps outcomes to them.

| code | meaning |
| ---: | --- |
| 0 | success, including "nothing to do" (a complete run, an evaluation already written) |
| 1 | user error: one `error:` line naming the key, flag or file to change |
| 2 | a malformed command line (argparse: unknown flag, missing argument) |
| 70 | a bug: an unexpected exception, with its traceback |
| 75 | stopped by a signal (SIGTERM, SIGINT, SIGUSR1) after saving its work: rerun to resume |
| 130 | aborted (Ctrl-C where nothing could be saved, or a second Ctrl-C): work since the last save is lost |
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable
from enum import IntEnum

from common.errors import InputWarning, UserError


class ExitCode(IntEnum):
    OK = 0
    USER_ERROR = 1
    USAGE = 2  # argparse's own code for a malformed command line
    BUG = 70  # EX_SOFTWARE
    STOPPED = 75  # EX_TEMPFAIL: stopped on request, resumable (the ablation runner and SLURM rerun it)
    ABORTED = 130  # 128 + SIGINT, the shell's code for a Ctrl-C


class StoppedBySignal(Exception):  # noqa: N818  (a request honoured, not an error)
    """Work stopped on a signal after saving what it had: its message says how to resume."""


def run_main(body: Callable[[], int]) -> int:
    """Run a command's body and turn its outcome into an ExitCode (and one line on stderr).

    MUONLAB_DEBUG=1 re-raises user errors with their traceback. Warnings about the input
    (InputWarning) are printed once each, as one `warning:` line without a source line.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("once", InputWarning)
        default_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            if issubclass(category, InputWarning):
                print(f"warning: {message}", file=sys.stderr)
            else:
                default_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return _outcome(body)


def _outcome(body: Callable[[], int]) -> int:
    try:
        return body()
    except UserError as err:
        if os.environ.get("MUONLAB_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except StoppedBySignal as stop:
        print(stop, file=sys.stderr)
        return ExitCode.STOPPED
    except KeyboardInterrupt:
        print("aborted (Ctrl-C): nothing was saved since the last checkpoint", file=sys.stderr)
        return ExitCode.ABORTED
    except Exception:  # a bug: keep the traceback, but with its own exit code
        traceback.print_exc()
        print("this is a bug in muonlab (exit code 70); please report it with the traceback above",
              file=sys.stderr)
        return ExitCode.BUG
