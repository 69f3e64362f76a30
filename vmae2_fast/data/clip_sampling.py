"""Which frames and which pixels make a clip: every host-side rule of the official pipelines, in
numpy, computed from the frame count and the frame size alone.

Both decoders follow these rules: the PyAV datasets apply them to the frames they decode, and the
DALI pipeline is told exactly which frames to decode and which boxes to crop. Rules:

* pre-training (``HybridVideoMAE`` + ``GroupMultiScaleCrop``): :func:`pretrain_frame_indices`,
  :func:`multiscale_crop_box`;
* fine-tuning (``VideoClsDataset.load_video`` / ``_aug_frame``): :func:`finetune_frame_indices`,
  :func:`sparse_frame_indices` (SSv2), :func:`random_resized_crop_box`, :func:`random_erasing_box`;
* multi-view testing (``final_test``): :func:`test_frame_indices`, :func:`test_crop_offsets`
  (in resized pixels, what the PyAV path crops) and :func:`test_crop_boxes` (the same crops in
  source pixels, what DALI crops before resizing).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["pretrain_frame_indices", "DEFAULT_SCALES", "crop_size_pairs", "fixed_crop_offsets",
           "multiscale_crop_box", "finetune_frame_indices", "sparse_frame_indices",
           "test_frame_indices", "random_resized_crop_box", "test_crop_offsets", "test_crop_boxes",
           "random_erasing_box", "resized_short_side"]


# ------------------------------------------------------------------------------ pre-training
def pretrain_frame_indices(n_frames: int, clip_len: int, step: int,
                           rng: np.random.Generator) -> np.ndarray:
    """Return ``clip_len`` 0-based frame indices (int64) for one pre-training clip.

    Examples: ``n_frames=100, step=4`` gives 16 indices spaced by 4 from a random start in
    ``[0, 36]``; ``n_frames=30, step=4`` gives ``[0, 4, ..., 28, 28, 28, ...]``.
    """
    if n_frames < 1:
        raise ValueError(f"cannot sample frames from a video with n_frames={n_frames} (< 1)")
    if clip_len < 1 or step < 1:
        raise ValueError(f"clip_len and step must be >= 1, got clip_len={clip_len}, step={step}")
    skip = clip_len * step
    avg = n_frames - skip + 1  # number of valid windows (the official code divides by 1 segment)
    # The official code works with a 1-based offset and appends ``offset - 1``.
    offset = int(rng.integers(avg)) + 1 if avg > 0 else 1
    out = np.empty(clip_len, dtype=np.int64)
    for k in range(clip_len):
        out[k] = offset - 1
        # Only advance while the next position stays strictly inside the video; otherwise the
        # last reachable frame repeats (this is how short videos are padded).
        if offset + step < n_frames:
            offset += step
    return out


DEFAULT_SCALES = (1, .875, .75, .66)
Box = Tuple[int, int, int, int]  # (x0, y0, crop_w, crop_h)


def crop_size_pairs(img_w: int, img_h: int, out_size: int,
                    scales: Sequence[float] = DEFAULT_SCALES, max_distort: int = 1):
    """All candidate ``(crop_w, crop_h)`` pairs, each drawn with equal probability.

    Candidate sides are ``int(min(w, h) * s)``; a side closer than 3 px to ``out_size`` is snapped
    to ``out_size`` (the official test is ``abs(x - size) < 3``). Width index ``i`` and height index
    ``j`` may differ by at most ``max_distort``, which bounds the aspect-ratio distortion.
    """
    base = min(img_w, img_h)
    sides = [int(base * s) for s in scales]
    sides = [out_size if abs(x - out_size) < 3 else x for x in sides]
    pairs = []
    for j, h in enumerate(sides):          # same nesting as the official code (height outer)
        for i, w in enumerate(sides):
            if abs(i - j) <= max_distort:
                # Snapping can make a side exceed a frame only a few px larger than out_size;
                # PIL would pad with black there, we clamp to stay inside the frame instead.
                pairs.append((min(w, img_w), min(h, img_h)))
    return pairs


def fixed_crop_offsets(img_w: int, img_h: int, crop_w: int, crop_h: int):
    """The 13 fixed ``(x0, y0)`` crop positions (``fix_crop=True, more_fix_crop=True``)."""
    ws = (img_w - crop_w) // 4
    hs = (img_h - crop_h) // 4
    return [
        (0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs),  # four corners
        (2 * ws, 2 * hs),                                    # centre
        (0, 2 * hs), (4 * ws, 2 * hs),                       # left-centre, right-centre
        (2 * ws, 4 * hs), (2 * ws, 0),                       # lower-centre, upper-centre
        (1 * ws, 1 * hs), (3 * ws, 1 * hs),                  # upper-left / upper-right quarter
        (1 * ws, 3 * hs), (3 * ws, 3 * hs),                  # lower-left / lower-right quarter
    ]


def multiscale_crop_box(img_w: int, img_h: int, out_size: int, rng: np.random.Generator,
                        scales: Sequence[float] = DEFAULT_SCALES, max_distort: int = 1) -> Box:
    """Draw one ``GroupMultiScaleCrop`` box ``(x0, y0, crop_w, crop_h)`` for an ``img_w x img_h`` frame."""
    pairs = crop_size_pairs(img_w, img_h, out_size, scales, max_distort)
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    offsets = fixed_crop_offsets(img_w, img_h, crop_w, crop_h)
    x0, y0 = offsets[int(rng.integers(len(offsets)))]
    return int(x0), int(y0), int(crop_w), int(crop_h)


# ------------------------------------------------------------------------------ fine-tuning
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


# ------------------------------------------------------------------------------ multi-view test
def test_frame_indices(n_frames: int, clip_len: int, rate: int, num_segments: int,
                       sparse: bool = False) -> np.ndarray:
    """The ``num_segments`` temporal views of the official test, ``(num_segments, clip_len)``.

    Dense: every ``rate``-th frame, padded to ``clip_len`` with the last one, and ``num_segments``
    windows spread over it (``start = int(s * (T - clip_len) / (S - 1))``; one segment takes the
    centred window, where the official formula divides by zero). Sparse (SSv2): ``clip_len``
    equal segments, and view ``s`` takes the frame at ``(s + 0.5) / S`` of each (the official
    interleaving ``buffer[s::S]``)."""
    if sparse:
        return np.stack([sparse_frame_indices(n_frames, clip_len, None, False, (s + 0.5) / num_segments)
                         for s in range(num_segments)])
    buf = np.arange(0, n_frames, rate)
    if buf.size < clip_len:
        buf = np.concatenate([buf, np.full(clip_len - buf.size, buf[-1])])
    starts = spread_offsets(buf.size, clip_len, num_segments)
    return np.stack([buf[s:s + clip_len] for s in starts]).astype(np.int64)


def spread_offsets(length: int, window: int, n: int) -> List[int]:
    """Start offsets of ``n`` windows of ``window`` spread over ``length`` (n = 1: centred)."""
    if n == 1:
        return [max(length - window, 0) // 2]
    return [int(i * max(length - window, 0) / (n - 1)) for i in range(n)]


def resized_short_side(w: int, h: int, short_side: int) -> Tuple[int, int]:
    """``(w, h)`` after resizing the short side to ``short_side`` (aspect kept, rounded)."""
    if min(w, h) == short_side:
        return w, h
    if h <= w:
        return max(1, round(w * short_side / h)), short_side
    return short_side, max(1, round(h * short_side / w))


def test_crop_offsets(w: int, h: int, size: int, num_crops: int, short_side: int
                      ) -> List[Tuple[int, int]]:
    """Top-left corners ``(x0, y0)`` of the ``num_crops`` spatial test views, in the pixels of the
    frame resized to ``short_side``: spread along the long side, centred across the short one."""
    rw, rh = resized_short_side(w, h, short_side)
    out = []
    for c in spread_offsets(max(rw, rh), size, num_crops):
        x0, y0 = (c, (rw - size) // 2) if rw >= rh else ((rw - size) // 2, c)
        out.append((max(x0, 0), max(y0, 0)))
    return out


def test_crop_boxes(w: int, h: int, size: int, num_crops: int, short_side: int | None = None):
    """The crops of :func:`test_crop_offsets` in SOURCE pixels, ``(x0, y0, cw, ch)`` floats: what a
    decoder that crops before it resizes (DALI) must take to get the same views."""
    short_side = size if short_side is None else short_side
    rw, rh = resized_short_side(w, h, short_side)
    kx, ky = w / rw, h / rh
    return [(x0 * kx, y0 * ky, min(size, rw) * kx, min(size, rh) * ky)
            for x0, y0 in test_crop_offsets(w, h, size, num_crops, short_side)]


# ------------------------------------------------------------------------------ augmentation
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


def random_erasing_box(h: int, w: int, rng: np.random.Generator, prob: float = 0.25,
                       area=(0.02, 1 / 3), min_aspect: float = 0.3):
    """timm ``RandomErasing`` (one rectangle, ``cube=True``: the same for every frame) on an
    ``h x w`` clip. Returns ``(y0, x0, eh, ew)`` or ``None`` (no erasing; ``prob <= 0`` draws
    nothing from ``rng``, so the draws after it are those of a run without erasing)."""
    if prob <= 0 or rng.random() >= prob:
        return None
    log_r = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        ar = math.exp(rng.uniform(*log_r))
        eh = int(round(math.sqrt(target * ar)))
        ew = int(round(math.sqrt(target / ar)))
        if eh < h and ew < w:
            return int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1)), eh, ew
    return None
