"""The rich Console of every command: on a terminal, its width; in a pipe or a log file, no wrapping.

rich wraps at 80 columns when stdout is not a terminal, which breaks tables and the commands a run
prints for copy-paste; a log has no width, so lines keep theirs.
"""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 10_000  # wide enough for any table row; tables do not stretch to it (expand=False)


def console() -> Console:
    """A Console that wraps at the terminal's width, or not at all when stdout is not a terminal."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=PIPE_WIDTH, soft_wrap=True)
