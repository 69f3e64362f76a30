"""Where a run writes: the output folder checked before any compute, and disk-full recognised.

`prepare_output_dir` creates the folder and writes (and fsyncs) a small probe file in it, so that
a file in the way, a folder without write permission, a read-only file system or a full disk is
reported at start-up as a user error (`OutputDirError`: ``error: ...``, exit code 2), not as a
traceback minutes or hours into a run. Only the OSErrors of these calls are translated; an
OSError anywhere else keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ..errors import OutputDirError

__all__ = ["prepare_output_dir", "is_no_space", "explain_os_error", "PROBE_BYTES"]

# Large enough that a full (or nearly full) disk fails the probe, small enough to cost nothing.
PROBE_BYTES = 64 * 1024
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def explain_os_error(exc: OSError) -> str:
    """The plain-words reason of an OSError met while writing."""
    code = getattr(exc, "errno", None)
    if code in _NO_SPACE:
        return "no space is left on its device (disk or quota full)"
    if code == errno.EROFS:
        return "it is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return "it is not writable (permission denied)"
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return f"{exc.strerror or exc}"


def is_no_space(exc: BaseException) -> bool:
    """Did ``exc`` come from a full disk? torch.save reports a failed write as a RuntimeError
    whose context is the OSError, so the chain of causes is searched."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def prepare_output_dir(path, flag: str = "--output-dir") -> Path:
    """Create ``path`` (and its parents) and prove that a file can be written and synced there.

    Raises `OutputDirError` naming ``flag`` and what to change."""
    out = Path(path)
    try:
        if out.exists() and not out.is_dir():
            raise OutputDirError(f"{flag} {out} exists and is a file, not a folder; pass another "
                                 f"{flag} or move the file away")
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), out)
        raise OutputDirError(f"cannot create {flag} {out}: {blocker} is a file, not a folder; "
                             f"pass another {flag}") from None
    except OSError as exc:
        raise OutputDirError(f"cannot create {flag} {out}: {explain_os_error(exc)}; pass another "
                             f"{flag}") from None
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        hint = "free some space or pass" if exc.errno in _NO_SPACE else "pass"
        raise OutputDirError(f"cannot write to {flag} {out}: {explain_os_error(exc)}; {hint} "
                             f"another {flag}") from None
    finally:
        if probe is not None:
            try:
                os.unlink(probe)
            except OSError:
                pass
    return out
