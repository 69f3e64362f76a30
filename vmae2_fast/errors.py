"""The exceptions that cross layers, and the one contract the command-line tools keep: a
`UserError` (or a `RunStopped`) ends a command with ``error: <message>`` and exit code 2; anything
else that escapes is a bug and keeps its traceback (`cli.exit_code`).

A user error is raised where the mistake is found: config checks (`ConfigError`), list, index and
video validation (`DataError`), a path that does not exist (`MissingFileError`), the output folder
(`OutputDirError`), checkpoint reading (`CheckpointError`, in models/weights.py's terms). Each is a
`ValueError` (and `MissingFileError` a `FileNotFoundError`), so library callers can keep catching
those; but a plain ValueError raised by a bug is never mistaken for the user's fault.
"""
from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user gave: a flag value, a list, a file or folder, a checkpoint."""


class ConfigError(UserError):
    """A flag or config value that cannot work (out of range, unknown name, contradicting another)."""


class DataError(UserError):
    """An annotation list, index or data root that cannot be used as it is."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputDirError(UserError):
    """The output folder cannot be used (a file is in the way, no permission, read-only file
    system, no space left)."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be read or does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint is readable but holds another model's weights (size, classes, layout)."""


class BadDataError(DataError):
    """Too many videos of the list cannot be read (or none can); the message has the counts."""


class RunStopped(Exception):
    """The run stopped cleanly for a reason outside the code (the disk is full, a data worker keeps
    dying); the message says why and the command that resumes it."""


class DiskFullError(RunStopped):
    """No space was left while writing a checkpoint; the previous checkpoint is intact."""


class DataPlaneError(RuntimeError):
    """A data worker process died or the decoder pipeline failed (not a bad file).

    ``files``: what was being read at the time (may be empty when the worker was idle)."""

    def __init__(self, message: str, files=()):
        super().__init__(message)
        self.files = list(files)


class MissingPackageError(UserError, ImportError):
    """An optional package a command needs is not installed; the message names the extra."""
