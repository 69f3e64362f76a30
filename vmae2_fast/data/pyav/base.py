"""What the PyAV datasets share: epoch-keyed randomness, memoised frame counts, and the rule for
unreadable videos during training.

Randomness: every draw for item ``i`` in epoch ``e`` comes from ``default_rng([seed, e, i,
attempt])``, so an item is a pure function of (seed, epoch, index): a resumed run sees the same
clips, the DALI path draws the same frames and boxes, and DataLoader workers need no reseeding.

Unreadable videos (training): a random other video is drawn from the same generator, at most
``max_retries`` times (the official code retries recursively without bound), and the item reports
the videos it passed over as ``(path, reason)`` pairs; they travel in the batch to the main
process, which lists each file once (`train.records`). When every try fails the item is None
and the trainer stops with the counts.

Worker board: with DataLoader workers, `WorkerBoard` (shared memory) holds the file each worker is
reading, so that a worker killed mid-read (out of memory, a signal) is reported with that file.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ...errors import DataError
from ..lists import VideoEntry
from ..media import FrameLayout, VideoDecodeError
from .frames import count_clip_frames

logger = logging.getLogger(__name__)


class VideoDataset(Dataset):
    def __init__(self, items: Sequence, seed: int = 0, max_retries: int = 10,
                 layout: FrameLayout | None = None):
        if len(items) == 0:
            raise DataError("the annotation list is empty: it needs one line per video")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds numpy's SeedSequence), got {seed}")
        self.layout = layout or FrameLayout()
        self.items = [as_entry(x, self.layout.start_idx) for x in items]
        self.seed, self.max_retries = int(seed), int(max_retries)
        self.epoch = 0
        # Frame counts found by decoding (lists with total_frames = -1; WebM stores no count).
        # Each DataLoader worker keeps its own memo, so a video is counted once per worker.
        self._counted: dict = {}
        self.board: Optional[WorkerBoard] = None      # set by the loader when it uses workers

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream (call before iterating, like DistributedSampler)."""
        self.epoch = int(epoch)

    def rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), attempt])

    def frame_count(self, item: VideoEntry) -> int:
        """The item's count if the list or the index gave it, else counted once (a video by
        decoding it, a frame folder by its consecutive files)."""
        if item.total > 0:
            return item.total
        n = self._counted.get(item.path)
        if n is None:
            n = self._counted[item.path] = count_clip_frames(item.path, self.layout, item.start)
        return n

    def path_of(self, index: int) -> str:
        item = self.items[index]
        return item.path if hasattr(item, "path") else item[0]

    def with_replacement(self, index: int, load: Callable[[int, np.random.Generator], object]):
        """``(load(current, rng), skipped)`` for the first readable video, starting at ``index``
        and replacing an unreadable one by a random other; ``skipped``: the ``(path, reason)`` of
        each video passed over. ``(None, skipped)`` when every try failed."""
        index = int(index)
        current, skipped = index, []
        for attempt in range(self.max_retries + 1):
            rng = self.rng(index, attempt)
            path = self.path_of(current)
            try:
                with self.reading(path):
                    return load(current, rng), skipped
            except VideoDecodeError as exc:
                logger.debug("unreadable video %s: %s", path, exc)
                skipped.append((path, str(exc)))
                current = int(rng.integers(len(self.items)))
        return None, skipped

    @contextlib.contextmanager
    def reading(self, path: str):
        """Marks ``path`` as the file this worker reads (see `WorkerBoard`)."""
        if self.board is None:
            yield
            return
        self.board.reading(path)
        try:
            yield
        finally:
            self.board.idle()


class WorkerBoard:
    """What each DataLoader worker is reading, in shared memory (one row per worker: pid, state,
    UTF-8 path), so that the main process can name the file a dead worker was reading."""

    WIDTH = 1024

    def __init__(self, num_workers: int):
        self.pids = torch.zeros(num_workers, dtype=torch.int64).share_memory_()
        self.paths = torch.zeros(num_workers, self.WIDTH, dtype=torch.uint8).share_memory_()
        self.busy = torch.zeros(num_workers, dtype=torch.uint8).share_memory_()

    def _row(self) -> Optional[int]:
        info = get_worker_info()
        return None if info is None or info.id >= len(self.pids) else info.id

    def reading(self, path: str) -> None:
        row = self._row()
        if row is None:
            return
        data = path.encode("utf-8", "replace")[: self.WIDTH]
        self.paths[row].zero_()
        self.paths[row, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.pids[row] = os.getpid()
        self.busy[row] = 1

    def idle(self) -> None:
        row = self._row()
        if row is not None:
            self.busy[row] = 0

    def files_of(self, pids) -> list:
        """What the workers with these pids were reading (rows that were idle give nothing)."""
        out = []
        for row, pid in enumerate(self.pids.tolist()):
            if pid in pids and self.busy[row]:
                out.append(bytes(self.paths[row].tolist()).rstrip(b"\0").decode("utf-8", "replace"))
        return out


def as_entry(item, start_idx: int) -> VideoEntry:
    """A `VideoEntry` from an entry or a ``(path, label)`` pair (whose frame folder, if it is one,
    starts at ``start_idx``)."""
    if isinstance(item, VideoEntry):
        return item
    path, label = item
    return VideoEntry(path, start=start_idx, label=label)
