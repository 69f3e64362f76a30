"""The run's records: skipped videos counted once per file, and records that continue from the
checkpoint on resume.

Skipped videos. A loader reports, with each batch, the videos it passed over as ``(path,
reason)`` pairs (they travel in the batch, so DataLoader worker processes need no channel of their
own). `SkippedVideos` keeps the distinct files of the epoch and of the run: the count in the
metrics is distinct files per epoch, each file is listed once in ``skipped.jsonl`` with its
reason (and logged once), and the run stops (`BadDataError`) when more than
``--max-bad-fraction`` of an epoch's videos failed. Under torchrun each rank keeps what it saw
until the next merge (log steps, epoch ends, checkpoints), where rank 0 gathers them.

Resume. A checkpoint remembers how long ``metrics.jsonl``, ``skipped.jsonl`` and ``log.txt``
were when it was written (`offsets`). Resuming from a checkpoint of the same output folder cuts
what the interrupted run wrote after it (`rewind`), so no row is doubled: the resumed run writes
those steps again.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import BadDataError
from .distributed import DistInfo, all_gather_objects

log = logging.getLogger("vmae2_fast")

METRICS, SKIPPED, LOG = "metrics.jsonl", "skipped.jsonl", "log.txt"
__all__ = ["SkippedVideos", "offsets", "rewind", "METRICS", "SKIPPED", "LOG"]


class SkippedVideos:
    """Distinct unreadable videos per epoch and per run; ``skipped.jsonl`` (main process)."""

    def __init__(self, out: Path, dist: DistInfo, num_videos: int = 0, max_bad_fraction: float = 1.0):
        self.path = Path(out) / SKIPPED
        self.dist, self.num_videos, self.max_bad_fraction = dist, int(num_videos), max_bad_fraction
        self.run: dict = {}            # path -> reason, every file that failed in this run
        self.epoch: set = set()        # files that failed in the epoch in progress
        self.pending: list = []        # (path, reason) seen on this rank since the last merge

    def add(self, skipped) -> None:
        """Record a batch's skipped videos; merged at once when alone (no collective needed)."""
        if skipped:
            self.pending.extend((str(p), str(r)) for p, r in skipped)

    def merge(self, epoch: int, global_step: int) -> None:
        """Fold every rank's pending reports in (a collective under torchrun: every rank calls
        it at the same points); list new files; stop when too many of the epoch's videos failed."""
        parts = all_gather_objects(self.pending, self.dist) if self.dist.enabled else [self.pending]
        self.pending = []
        new = []
        for path, reason in (item for part in parts for item in part):
            self.epoch.add(path)
            if path not in self.run:
                self.run[path] = reason
                new.append({"path": path, "reason": reason, "epoch": epoch, "global_step": global_step})
        if new and self.dist.is_main:
            with open(self.path, "a", encoding="utf-8") as f:
                for row in new:
                    f.write(json.dumps(row) + "\n")
            for row in new:
                log.warning("skipping unreadable video %s: %s (listed in %s)", row["path"],
                            row["reason"], self.path.name)
        limit = self.max_bad_fraction * self.num_videos
        if self.num_videos and len(self.epoch) > limit:
            raise BadDataError(
                f"{len(self.epoch)} of the {self.num_videos} videos of the list could not be read in "
                f"epoch {epoch}, more than --max-bad-fraction {self.max_bad_fraction:g} of them; "
                f"each is listed with its reason in {self.path}. Fix or remove them from the list "
                "(or raise --max-bad-fraction), then run the same command again to resume.")

    def none_readable(self, epoch: int) -> BadDataError:
        """The error for a batch whose video and every random replacement failed."""
        failed = self.epoch | {p for p, _ in self.pending}
        return BadDataError(
            f"no readable video found: a video and all its random replacements failed to load "
            f"({len(failed)} distinct files of {self.num_videos or 'the list'} failed in epoch "
            f"{epoch}, e.g. {next(iter(sorted(failed)), '?')}). Check the list and --data-root.")

    def new_epoch(self) -> None:
        self.epoch = set()

    def state_dict(self) -> dict:
        return {"run": dict(self.run), "epoch": sorted(self.epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.run = dict(state.get("run", {}))
        self.epoch = set(state.get("epoch", []))
        self.pending = []


def offsets(out: Path) -> dict:
    """Sizes of the record files now (what a checkpoint remembers; flushed lines only)."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.flush()
    return {name: (Path(out) / name).stat().st_size if (Path(out) / name).exists() else 0
            for name in (METRICS, SKIPPED, LOG)}


def _log_handler(path: Path):
    target = os.path.abspath(path)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and h.baseFilename == target:
            return h
    return None


def _count_lines(path: Path, start: int, end: int) -> int:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(max(0, end - start)).count(b"\n")


def rewind(out: Path, kept: dict | None, global_step: int) -> dict:
    """Cut what was written after a checkpoint out of the records; returns the lines dropped per
    file. ``kept``: the checkpoint's `offsets` (None for a checkpoint written before records
    were remembered: then metric rows after ``global_step`` are dropped by their step)."""
    out = Path(out)
    dropped = {}
    if kept is None:
        path = out / METRICS
        if path.exists():
            rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
            keep = [r for r in rows if json.loads(r).get("global_step", 0) <= global_step]
            if len(keep) < len(rows):
                path.write_text("".join(keep), encoding="utf-8")
                dropped[METRICS] = len(rows) - len(keep)
        return dropped
    for name in (METRICS, SKIPPED):
        path = out / name
        size = path.stat().st_size if path.exists() else 0
        if size > kept.get(name, 0):
            dropped[name] = _count_lines(path, kept[name], size)
            os.truncate(path, kept[name])      # writers append (O_APPEND): they continue here
    dropped_log = _rewind_log(out / LOG, kept.get(LOG, 0))
    if dropped_log:
        dropped[LOG] = dropped_log
    return dropped


def _rewind_log(path: Path, keep: int) -> int:
    """Cut the lines between the checkpoint and this process's first line (a killed run's tail),
    or, when this process wrote the checkpoint itself, everything after it."""
    if not path.exists():
        return 0
    handler = _log_handler(path)
    if handler is not None:
        handler.acquire()
    try:
        if handler is not None:
            handler.flush()
        size = path.stat().st_size
        start = getattr(handler, "start_offset", size) if handler is not None else size
        end = start if keep < start else size
        if end <= keep:
            return 0
        n = _count_lines(path, keep, end)
        with open(path, "rb") as f:
            f.seek(end)
            ours = f.read()                    # this process's lines since it started
        os.truncate(path, keep)
        with open(path, "ab") as f:
            f.write(ours)
        if handler is not None and keep < start:
            handler.start_offset = keep
        return n
    finally:
        if handler is not None:
            handler.release()
