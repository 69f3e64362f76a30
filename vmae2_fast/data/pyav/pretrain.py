"""Stage-1 pre-training dataset on the CPU (PyAV decode + torch transforms).

One item = one video decoded once with one temporal window, then ``num_sample`` independent
multi-scale crops of it (the official repeated augmentation, ``--num_sample``). Masks are not made
here: the trainer draws them on the device as index tensors.

Randomness: every draw comes from ``np.random.default_rng([seed, epoch, index, attempt])``. An item
is therefore a pure function of (seed, epoch, index): a resumed run sees the same clips, and
DataLoader workers need no reseeding (the official code reseeds numpy per worker instead).

Unreadable videos: the official code prints and retries recursively without bound. Here another
index is drawn from the same generator, at most ``max_retries`` times in a loop, and the item
reports the ``(path, reason)`` of each video it skipped (`base.VideoDataset.with_replacement`).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..batches import PretrainBatch
from ..clip_sampling import multiscale_crop_box, pretrain_frame_indices
from ..lists import VideoEntry
from ..media import FrameLayout
from ..transforms import crop_resize
from .base import VideoDataset
from .frames import decode_clip

__all__ = ["PretrainVideoDataset", "pretrain_collate"]

logger = logging.getLogger(__name__)


class PretrainVideoDataset(VideoDataset):
    """Returns ``(clips, skipped)``: uint8 pixels ``(num_sample, 3, num_frames, S, S)``, not
    normalised (the stage normalises them on the device, `pixels.normalize_on_device`; None when
    no readable video was found) and the ``(path, reason)`` pairs of the videos passed over."""

    def __init__(self, items: Sequence[VideoEntry], num_frames: int = 16, sampling_rate: int = 4,
                 input_size: int = 224, num_sample: int = 1, seed: int = 0, max_retries: int = 10,
                 layout: FrameLayout | None = None):
        super().__init__(items, seed, max_retries, layout)
        if num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {num_sample}")
        self.num_frames = int(num_frames)
        self.sampling_rate = int(sampling_rate)
        self.input_size = int(input_size)
        self.num_sample = int(num_sample)

    def _load(self, current: int, rng: np.random.Generator) -> torch.Tensor:
        return self.clips_of(self.items[current], rng)

    def clips_of(self, item: VideoEntry, rng: np.random.Generator) -> torch.Tensor:
        """The views of one entry (a file, a frame folder or an `EncodedVideo`)."""
        n_frames = self.frame_count(item)
        indices = pretrain_frame_indices(n_frames, self.num_frames, self.sampling_rate, rng)
        # (T, H, W, 3) uint8, decoded once; a frame folder starts at its list line's start_idx
        frames = decode_clip(item.path, indices, self.layout, item.start)
        h, w = frames.shape[1:3]
        x = torch.from_numpy(frames)
        views = [crop_resize(x, multiscale_crop_box(w, h, self.input_size, rng), self.input_size)
                 for _ in range(self.num_sample)]
        return torch.stack(views)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], list]:
        return self.with_replacement(index, self._load)


def pretrain_collate(batch: Sequence[Tuple[Optional[torch.Tensor], list]]) -> PretrainBatch:
    """Flatten the views: ``video`` ``(B*K, 3, T, S, S)`` in sample-major order, and the batch's
    skipped ``(path, reason)`` pairs; ``video`` is None when an item found no readable video."""
    skipped = tuple(s for _, sk in batch for s in sk)
    if any(c is None for c, _ in batch):
        return PretrainBatch(None, skipped)
    return PretrainBatch(torch.cat([c for c, _ in batch], dim=0), skipped)
