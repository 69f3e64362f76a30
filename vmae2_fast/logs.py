"""Logging for the command-line runs: lines through tqdm (so they do not break a progress bar), the
main process at INFO and the others at WARNING, and a log.txt in the output folder."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from .errors import OutputDirError


class _TqdmHandler(logging.StreamHandler):
    """Logs through tqdm.write so that log lines do not break a progress bar; on stdout, or on
    stderr for a command whose stdout is its result (predict's JSON lines). The stream is looked
    up at each line, so that a redirected sys.stdout (pytest's capture) is followed."""

    def __init__(self, to_stderr: bool = False):
        super().__init__()
        self.to_stderr = to_stderr

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr if self.to_stderr else sys.stdout)
        except Exception:  # pragma: no cover - logging must never kill training
            self.handleError(record)


def setup_logging(output_dir: str | None, is_main: bool, to_stderr: bool = False) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S")
    handler = _TqdmHandler(to_stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    # the object-store clients narrate every connection at INFO ("Found credentials in ..."):
    # their warnings and errors are what a run's log needs
    for name in ("botocore", "aiobotocore", "s3fs", "fsspec"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if output_dir and is_main:
        from .train.storage import prepare_output_dir
        prepare_output_dir(output_dir)          # a folder problem is `error: ...` before compute
        path = Path(output_dir) / "log.txt"
        try:
            fh = logging.FileHandler(path)
        except OSError as exc:
            raise OutputDirError(f"cannot open {path} for writing ({exc.strerror}); pass another "
                                 "--output-dir") from None
        # where this process's lines start: a resumed run cuts the killed run's tail out of the
        # log up to here (train/records.py), so the log continues from the checkpoint
        fh.start_offset = path.stat().st_size
        fh.setFormatter(fmt)
        root.addHandler(fh)
