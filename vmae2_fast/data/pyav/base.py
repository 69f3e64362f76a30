"""What the PyAV datasets share: epoch-keyed randomness, memoised frame counts, and the rule for
unreadable videos during training.

Randomness: every draw for item ``i`` in epoch ``e`` comes from ``default_rng([seed, e, i,
attempt])``, so an item is a pure function of (seed, epoch, index): a resumed run sees the same
clips, the DALI path draws the same frames and boxes, and DataLoader workers need no reseeding.

Unreadable videos (training): the failure is logged with the file and the reason, a random other
video is drawn from the same generator, at most ``max_retries`` times, and the item reports how
many videos it skipped (the official code retries recursively without bound).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..lists import VideoEntry
from .frames import FrameLayout, count_clip_frames
from .video_io import VideoDecodeError

logger = logging.getLogger(__name__)


class VideoDataset(Dataset):
    def __init__(self, items: Sequence, seed: int = 0, max_retries: int = 10,
                 layout: FrameLayout | None = None):
        if len(items) == 0:
            raise ValueError("the annotation list is empty: it needs one line per video")
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

    def with_replacement(self, index: int, load: Callable[[int, np.random.Generator], object]):
        """``(load(current, rng), n_skipped)`` for the first readable video, starting at ``index``
        and replacing an unreadable one by a random other (see the module docstring)."""
        index = int(index)
        current, n_skipped, last_error = index, 0, ""
        for attempt in range(self.max_retries + 1):
            rng = self.rng(index, attempt)
            try:
                return load(current, rng), n_skipped
            except VideoDecodeError as exc:
                n_skipped += 1
                last_error = f"{exc}"
                logger.warning("skipping unreadable video: %s", last_error)
                current = int(rng.integers(len(self.items)))
        raise RuntimeError(
            f"too many unreadable videos: item {index} and {self.max_retries} random replacements "
            f"all failed to load (last: {last_error}); check the list file and --data-root")


def as_entry(item, start_idx: int) -> VideoEntry:
    """A `VideoEntry` from an entry or a ``(path, label)`` pair (whose frame folder, if it is one,
    starts at ``start_idx``)."""
    if isinstance(item, VideoEntry):
        return item
    path, label = item
    return VideoEntry(path, start=start_idx, label=label)
