"""Frame indices and crop boxes of the official fine-tuning and test pipelines (host side, numpy).

Pre-training indices live in ``sampling.py``; the multi-scale crop in ``transforms.py``. These are
the remaining official rules (``VideoClsDataset.load_video`` / ``_aug_frame`` / ``final_test``),
computed from the frame count and the frame size alone, so that a decoder (DALI) can be told
exactly which frames to decode and which boxes to crop.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

__all__ = ["finetune_frame_indices", "sparse_frame_indices", "test_frame_indices",
           "random_resized_crop_box", "test_crop_boxes", "random_erasing_box"]


def finetune_frame_indices(n_frames: int, clip_len: int, rate: int, rng: np.random.Generator | None,
                           train: bool = True) -> np.ndarray:
    """Official ``load_video`` (one segment): a random (train) or centred (val) window of
    ``clip_len * rate`` frames, ``clip_len`` indices from ``linspace`` over it."""
    if n_frames < 1:
        raise ValueError(f"cannot sample frames from a video with n_frames={n_frames}")
    span = clip_len * rate
    if n_frames <= span:
        idx = np.linspace(0, n_frames, n_frames // rate)
        idx = np.concatenate([idx, np.full(clip_len - n_frames // rate, n_frames)])
        return np.clip(idx, 0, n_frames - 1).astype(np.int64)
    end = int(rng.integers(span, n_frames)) if train else (span + n_frames) // 2
    start = end - span
    return np.clip(np.linspace(start, end, clip_len), start, end - 1).astype(np.int64)


def sparse_frame_indices(n_frames: int, clip_len: int, rng: np.random.Generator | None,
                         train: bool = True, offset: float = 0.5) -> np.ndarray:
    """TSN-style segments (SSv2, ``--sparse_sample``): one random (train) frame in each of
    ``clip_len`` equal segments, or the one at ``offset`` (0.5: the centre) of each segment."""
    seg = n_frames / clip_len
    offs = rng.random(clip_len) * seg if train else np.full(clip_len, seg * offset)
    return np.minimum((np.arange(clip_len) * seg + offs).astype(np.int64), n_frames - 1)


def test_frame_indices(n_frames: int, clip_len: int, rate: int, num_segments: int) -> np.ndarray:
    """Official multi-view test: every ``rate``-th frame, padded to ``clip_len`` with the last one,
    and ``num_segments`` windows spread over it. Returns ``(num_segments, clip_len)``."""
    buf = np.arange(0, n_frames, rate)
    if buf.size < clip_len:
        buf = np.concatenate([buf, np.full(clip_len - buf.size, buf[-1])])
    out = np.empty((num_segments, clip_len), dtype=np.int64)
    for s in range(num_segments):
        # the official formula divides by num_segments - 1; one segment takes the centre window
        start = (int(s * max((buf.size - clip_len) / (num_segments - 1), 0)) if num_segments > 1
                 else (buf.size - clip_len) // 2)
        out[s] = buf[start:start + clip_len]
    return out


def random_resized_crop_box(w: int, h: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """Box ``(x0, y0, cw, ch)`` of the official ``random_resized_crop`` (10 tries in log-ratio
    space, then a centre crop clamped to ``ratio``)."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def test_crop_boxes(w: int, h: int, size: int, num_crops: int):
    """The official test crops in ORIGINAL pixel coordinates: the short side is resized to
    ``size`` and ``num_crops`` squares are spread along the long side. Returns float boxes
    ``(x0, y0, cw, ch)`` (a crop of ``size`` resized pixels is ``size * short / size`` original)."""
    short = min(w, h)
    k = short / size                       # original pixels per resized pixel
    long_resized = round(max(w, h) / k)
    boxes = []
    for c in range(num_crops):
        off = (int(c * (long_resized - size) / (num_crops - 1)) if num_crops > 1
               else (long_resized - size) // 2)
        if w >= h:
            boxes.append((off * k, 0.0, short, short))
        else:
            boxes.append((0.0, off * k, short, short))
    return boxes


def random_erasing_box(size: int, rng: np.random.Generator, prob: float = 0.25,
                       area=(0.02, 1 / 3), min_aspect: float = 0.3):
    """timm ``RandomErasing`` (one rectangle, ``cube=True``: the same for every frame) on a
    ``size x size`` clip. Returns ``(y0, x0, eh, ew)`` or ``None`` (no erasing)."""
    if rng.random() >= prob:
        return None
    log_r = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target = size * size * rng.uniform(*area)
        ar = math.exp(rng.uniform(*log_r))
        eh = int(round(math.sqrt(target * ar)))
        ew = int(round(math.sqrt(target / ar)))
        if eh < size and ew < size:
            return int(rng.integers(0, size - eh + 1)), int(rng.integers(0, size - ew + 1)), eh, ew
    return None
