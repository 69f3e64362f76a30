"""Spatial augmentation of stage-1 pre-training: multi-scale fixed crop, resize, normalise.

Matches the official ``DataAugmentationForVideoMAEv2``: ``GroupMultiScaleCrop(input_size,
[1, .875, .75, .66], max_distort=1, fix_crop=True, more_fix_crop=True)``, a PIL bilinear resize,
division by 255 and ImageNet normalisation, output ``(C, T, H, W)``. No flip, no colour jitter.
The crop box is chosen once per clip and applied to every frame.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_SCALES",
    "crop_size_pairs", "fixed_crop_offsets", "multiscale_crop_box", "crop_resize_normalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


def _norm_affine(device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) per channel so that ``x * scale + bias == (x / 255 - mean) / std``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device)
    return (1.0 / (255.0 * std)).view(3, 1, 1, 1), (-mean / std).view(3, 1, 1, 1)


def crop_resize_normalize(frames: Union[np.ndarray, torch.Tensor], box: Box,
                          out_size: int) -> torch.Tensor:
    """Crop ``box`` from uint8 frames ``(T, H, W, 3)``, resize, normalise -> float32 ``(3, T, S, S)``.

    The resize is ``F.interpolate(mode='bilinear', antialias=True)`` on the uint8 tensor. The
    official code resizes each PIL image with ``Image.BILINEAR``; torch's uint8 antialiased bilinear
    kernel uses the same separable filter with integer rounding, and in our tests it agrees with PIL
    to within 1 grey level (almost all pixels identical). Working in uint8 also keeps the integer
    quantisation that the official PIL path has before ``ToTensor`` divides by 255.
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    x0, y0, cw, ch = (int(v) for v in box)
    _, h, w, _ = x.shape
    if cw <= 0 or ch <= 0 or x0 < 0 or y0 < 0 or x0 + cw > w or y0 + ch > h:
        raise ValueError(f"crop box {box} does not fit in a {w}x{h} frame")
    x = x[:, y0:y0 + ch, x0:x0 + cw, :].permute(0, 3, 1, 2)  # (T, 3, ch, cw), a view
    if (ch, cw) != (out_size, out_size):
        # A channels-last view is what the fast uint8 kernel wants; no copy is made here.
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear",
                          align_corners=False, antialias=True)
    scale, bias = _norm_affine(x.device)
    # (T, 3, S, S) -> (3, T, S, S), then one fused multiply-add per element.
    return torch.addcmul(bias, x.permute(1, 0, 2, 3).to(torch.float32), scale).contiguous()
