"""The exceptions that cross layers: raised by the data plane or the loop, shown to a user by the
CLIs as ``error: ...`` with exit code 2 (`cli.exit_code`), never as a traceback.

A user error is a ``ValueError`` (or ``FileNotFoundError``): a bad flag, list, folder or file.
`RunStopped` is the other clean stop: the run could not go on for a reason outside the code (the
disk is full, a data worker keeps dying) and its message says how to resume. Anything else that
escapes is a bug and keeps its traceback.
"""
from __future__ import annotations


class RunStopped(Exception):
    """The run stopped cleanly; the message says why and the command that resumes it."""


class OutputDirError(ValueError):
    """The output folder cannot be used (a file is in the way, no permission, read-only file
    system, no space left)."""


class DiskFullError(RunStopped):
    """No space was left while writing a checkpoint; the previous checkpoint is intact."""


class BadDataError(ValueError):
    """Too many videos of the list cannot be read (or none can); the message has the counts."""


class DataPlaneError(RuntimeError):
    """A data worker process died or the decoder pipeline failed (not a bad file).

    ``files``: what was being read at the time (may be empty when the worker was idle)."""

    def __init__(self, message: str, files=()):
        super().__init__(message)
        self.files = list(files)
