"""Fine-tuning / evaluation data on the CPU (PyAV decode + torch transforms): the official
``VideoClsDataset`` behaviour (reference section 6.3).

Temporal sampling (``clip_len`` frames at rate ``r``, window ``L = clip_len * r``):
  * training: ``end ~ U[L, n)``, ``linspace(end - L, end, clip_len)`` clipped to ``[start, end-1]``
    and truncated (so the stride is ~4.27, not 4, at r = 4); a video with ``n <= L`` frames uses
    ``linspace(0, n, n // r)`` padded with ``n`` and clipped to ``n - 1``;
  * validation: the same with the centred window ``end = (L + n) // 2``;
  * ``sparse`` (SSv2-style TSN sampling): ``clip_len`` equal segments, a random frame per segment
    for training, the segment centre for validation.
Training augmentation, per repeated-augmentation view: video RandAugment (one plan for every
frame) -> random resized crop (scale (0.08, 1), ratio (3/4, 4/3), one box for every frame,
bilinear resize) -> horizontal flip p 0.5 (off for SSv2) -> ImageNet normalisation -> cube random
erasing (p 0.25, the same box in every frame, N(0, 1) pixels). Validation: resize the short side
to ``short_side_size``, centre crop. Randomness: ``default_rng([seed, epoch, index, attempt])``.

What crosses to the device is the float32 clip in 0..255 (the resize makes non-integer values:
rounding them to uint8 would change the function) and, for training, the erasing boxes with
their noise (`pixels.Erasure`); the stage normalises and pastes the noise there
(`pixels.normalize_on_device`), so the values the model sees are the ones listed above.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..batches import ClassifyBatch, EvalBatch
from ..clip_sampling import (finetune_frame_indices, random_resized_crop_box, sparse_frame_indices,
                             test_crop_offsets, test_frame_indices)
from ..media import FrameLayout, VideoDecodeError
from ..transforms import draw_cube_erasure, resize_short_side, to_float_tchw
from .base import VideoDataset, as_entry
from .frames import count_clip_frames, decode_clip
from .randaugment import VideoRandAugment

__all__ = ["VideoClsDataset", "VideoTestDataset", "cls_collate", "eval_collate"]

logger = logging.getLogger(__name__)


class VideoClsDataset(VideoDataset):
    """Training items ``(clips (K, 3, T, S, S), label, erasures, skipped)``, K = ``num_sample``,
    ``erasures`` the `pixels.Erasure` records of the K views (view index first); validation
    items ``(clip (1, 3, T, S, S), label, skipped, path)``; ``skipped``: the ``(path, reason)``
    of each unreadable video passed over. Clips are float32 pixels in 0..255, not normalised.

    An unreadable training video is replaced by a random other one (`with_replacement`; the
    clips are None when every try failed); in validation it is reported and the item is
    ``(None, label, ((path, reason),), path)`` (dropped by the collate).
    """

    def __init__(self, items: Sequence, train: bool, num_frames: int = 16,
                 sampling_rate: int = 4, input_size: int = 224, short_side_size: int = 224,
                 num_sample: int = 2, flip: bool = True, aa: str = "rand-m7-n4-mstd0.5-inc1",
                 reprob: float = 0.25, min_crop_scale: float = 0.08, sparse: bool = False,
                 seed: int = 0, max_retries: int = 10, layout: FrameLayout | None = None):
        """``items``: `VideoEntry` records or ``(path, label)`` pairs; a path may be a video file
        or a frame folder (``layout``)."""
        super().__init__(items, seed, max_retries, layout)
        self.train = train
        self.num_frames, self.sampling_rate = int(num_frames), int(sampling_rate)
        self.input_size, self.short_side_size = int(input_size), int(short_side_size)
        self.num_sample = int(num_sample) if train else 1
        self.flip, self.reprob, self.sparse = flip, float(reprob), sparse
        self.min_crop_scale = float(min_crop_scale)
        self.randaug = VideoRandAugment.from_policy(aa) if train else None

    def _indices(self, item, rng) -> np.ndarray:
        n = self.frame_count(item)
        if self.sparse:
            return sparse_frame_indices(n, self.num_frames, rng, self.train)
        return finetune_frame_indices(n, self.num_frames, self.sampling_rate, rng, self.train)

    def _train_view(self, frames: np.ndarray, rng) -> tuple:
        """(pixels (3, T, S, S), erasing draw or None), the draws in the official order."""
        if self.randaug is not None:
            frames = self.randaug(frames, rng)
        x = to_float_tchw(frames)
        x0, y0, cw, ch = random_resized_crop_box(x.shape[-1], x.shape[-2], rng,
                                                 scale=(self.min_crop_scale, 1.0))
        x = F.interpolate(x[:, :, y0:y0 + ch, x0:x0 + cw], size=(self.input_size,) * 2,
                          mode="bilinear", align_corners=False)
        if self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        return _cthw(x), draw_cube_erasure(x.shape[0], self.input_size, self.input_size, rng, self.reprob)

    def _val_view(self, frames: np.ndarray) -> torch.Tensor:
        x = resize_short_side(to_float_tchw(frames), self.short_side_size)
        h, w = x.shape[-2:]
        s = self.input_size
        y0, x0 = max((h - s) // 2, 0), max((w - s) // 2, 0)
        x = x[:, :, y0:y0 + s, x0:x0 + s]
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return _cthw(x)

    def _train_item(self, current: int, rng):
        return self.train_item_of(self.items[current], rng)

    def train_item_of(self, item, rng):
        """The clips, the label of the video actually loaded (a replacement has its own) and the
        views' erasures."""
        frames = decode_clip(item.path, self._indices(item, rng), self.layout, item.start)
        views = [self._train_view(frames, rng) for _ in range(self.num_sample)]
        erasures = [(k,) + box for k, (_, box) in enumerate(views) if box is not None]
        return torch.stack([x for x, _ in views]), item.label, erasures

    def __getitem__(self, index: int):
        if self.train:
            loaded, skipped = self.with_replacement(index, self._train_item)
            if loaded is None:
                return None, -1, [], skipped
            return loaded + (skipped,)
        item = self.items[int(index)]
        path, label = item.path, item.label
        try:
            with self.reading(path):
                frames = decode_clip(path, self._indices(item, self.rng(index)), self.layout, item.start)
            return self._val_view(frames)[None], label, (), path
        except VideoDecodeError as exc:
            logger.warning("skipping unreadable video %s (%s)", path, exc)
            return None, label, ((path, str(exc)),), path


def _cthw(x_tchw: torch.Tensor) -> torch.Tensor:
    return x_tchw.permute(1, 0, 2, 3).contiguous()


def cls_collate(batch) -> ClassifyBatch:
    """The items' clips ``(sum K, 3, T, S, S)`` (views sample-major), one label per clip, the
    `pixels.Erasure` records indexed in the batch, and the batch's skipped ``(path, reason)``
    pairs; ``video`` is None when an item found no readable video (the trainer stops with the
    counts)."""
    skipped = tuple(s for *_, sk in batch for s in sk)
    if any(c is None for c, *_ in batch):
        return ClassifyBatch(None, None, [], skipped)
    clips = torch.cat([c for c, *_ in batch])
    labels = torch.cat([torch.full((c.shape[0],), int(y), dtype=torch.int64) for c, y, *_ in batch])
    erasures, first = [], 0
    for c, _, er, _ in batch:
        erasures += [(first + k,) + tuple(box) for k, *box in er]
        first += c.shape[0]
    return ClassifyBatch(clips, labels, erasures, skipped)


class VideoTestDataset(Dataset):
    """Multi-view test items ``(views (S*C, 3, T, size, size), label, skipped, path)`` (float32
    pixels in 0..255, not normalised): the
    official ``final_test`` views of one video from ONE decode (`clip_sampling.test_frame_indices`
    and `test_crop_offsets`, the rules the DALI test mode follows): the frames of every temporal
    view are decoded once, the short side resized to ``short_side``, ``crops`` squares taken along
    the long side. An unreadable video gives ``(None, label, ((path, reason),), path)``, dropped by
    the collate."""

    def __init__(self, items: Sequence, num_frames: int = 16, sampling_rate: int = 4,
                 input_size: int = 224, short_side_size: int = 224, segments: int = 5, crops: int = 3,
                 sparse: bool = False, layout: FrameLayout | None = None):
        if segments < 1 or crops < 1:
            raise ValueError("the number of temporal segments and spatial crops must be at least 1")
        self.layout = layout or FrameLayout()
        self.items = [as_entry(x, self.layout.start_idx) for x in items]
        self.T, self.rate, self.size = int(num_frames), int(sampling_rate), int(input_size)
        self.short_side, self.segments, self.crops, self.sparse = int(short_side_size), segments, crops, sparse

    def __len__(self) -> int:
        return len(self.items)

    def views(self, item) -> torch.Tensor:
        """The views of one `VideoEntry` (or a path: a video, or a folder from ``start_idx``)."""
        item = as_entry((item, None), self.layout.start_idx) if isinstance(item, str) else item
        n = item.total if item.total > 0 else count_clip_frames(item.path, self.layout, item.start)
        idx = test_frame_indices(n, self.T, self.rate, self.segments, self.sparse)
        uniq, inv = np.unique(idx.reshape(-1), return_inverse=True)
        frames = decode_clip(item.path, uniq, self.layout, item.start)   # (U, H, W, 3), one decode
        h, w = frames.shape[1:3]
        buf = resize_short_side(to_float_tchw(frames), self.short_side)
        out = []
        for s in range(self.segments):
            clip = buf[torch.from_numpy(inv[s * self.T:(s + 1) * self.T])]
            for x0, y0 in test_crop_offsets(w, h, self.size, self.crops, self.short_side):
                crop = clip[:, :, y0:y0 + self.size, x0:x0 + self.size]
                if crop.shape[-2:] != (self.size, self.size):           # frame smaller than a crop
                    crop = F.interpolate(crop, size=(self.size,) * 2, mode="bilinear", align_corners=False)
                out.append(_cthw(crop))
        return torch.stack(out)

    def __getitem__(self, index: int):
        item = self.items[int(index)]
        path, label = item.path, item.label
        try:
            return self.views(item), label, (), path
        except VideoDecodeError as exc:
            logger.warning("skipping unreadable video %s (%s)", path, exc)
            return None, label, ((path, str(exc)),), path


def eval_collate(batch) -> EvalBatch:
    """The readable videos' views ``(sum V, 3, T, S, S)`` (a video's V views consecutive), one
    label and path per video, and the unreadable ones as ``(path, reason)`` pairs."""
    kept = [(c, y, p) for c, y, _, p in batch if c is not None]
    skipped = tuple(s for _, _, sk, _ in batch for s in sk)
    if not kept:
        return EvalBatch(None, None, [], skipped)
    return EvalBatch(torch.cat([c for c, _, _ in kept]),
                     torch.tensor([y for _, y, _ in kept], dtype=torch.int64), [p for _, _, p in kept],
                     skipped)
