"""The one type for "fix your input": entry points print it as one `error:` line and exit 1.

Anything else is a bug and keeps its traceback. `UserError` derives from `ValueError` so that code
written against the older `ValueError`s keeps catching the same errors.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message names the key, flag or file to change."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class InputWarning(UserWarning):
    """A warning about the user's input (allowed, but probably not meant): entry points print each one
    once, as one `warning:` line (common.cli.run_main)."""
