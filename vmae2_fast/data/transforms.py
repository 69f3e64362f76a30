"""Pixel operations of the CPU (PyAV) data path, in torch: crop + resize in uint8 (stage 1),
short-side resize on floats (stages 2 and 3), ImageNet normalisation of one clip, and the noise of
cube random erasing.

Which box, which frames and which erasing rectangle are decided in ``clip_sampling.py`` (shared
with DALI); this module only moves pixels. Stage 1 matches the official
``DataAugmentationForVideoMAEv2``: the multi-scale box and a PIL-equivalent bilinear resize, one box
for every frame, no flip, no colour jitter; the division by 255 and the ImageNet normalisation run
on the device (`pixels.normalize_on_device`).
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .clip_sampling import random_erasing_box, resized_short_side

__all__ = ["crop_resize", "to_float_tchw", "normalize", "resize_short_side", "draw_cube_erasure"]


def crop_resize(frames: Union[np.ndarray, torch.Tensor], box: Tuple[int, int, int, int],
                out_size: int) -> torch.Tensor:
    """Crop ``box`` from uint8 frames ``(T, H, W, 3)`` and resize -> uint8 ``(3, T, S, S)``, the
    pixels that cross to the device (`pixels.normalize_on_device` normalises them there).

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
    return x.permute(1, 0, 2, 3).contiguous()                # (T, 3, S, S) -> (3, T, S, S)


def to_float_tchw(frames) -> torch.Tensor:
    return torch.as_tensor(frames).permute(0, 3, 1, 2).float()          # (T, 3, H, W), 0..255


def normalize(x_tchw: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) in 0..255 -> (3, T, H, W) ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return ((x_tchw - mean) / std).permute(1, 0, 2, 3).contiguous()


def resize_short_side(x_tchw: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``(T, C, H, W)`` to the size `clip_sampling.resized_short_side` gives
    (the rule DALI's test crops are computed with)."""
    h, w = x_tchw.shape[-2:]
    nw, nh = resized_short_side(w, h, size)
    if (nh, nw) == (h, w):
        return x_tchw
    return F.interpolate(x_tchw, size=(nh, nw), mode="bilinear", align_corners=False)


def draw_cube_erasure(t: int, h: int, w: int, rng: np.random.Generator, prob: float = 0.25):
    """The official cube random erasing's draws for a ``(3, t, h, w)`` clip: None (not erased),
    or ``(y0, x0, eh, ew, noise)``, the rectangle of `clip_sampling.random_erasing_box` (the same
    in every frame) and its float32 ``(3, t, eh, ew)`` N(0, 1) noise, drawn next from ``rng`` so
    that a run is reproducible; the noise is written over the NORMALISED clip."""
    box = random_erasing_box(h, w, rng, prob)
    if box is None:
        return None
    eh, ew = box[2:]
    return box + (torch.from_numpy(rng.standard_normal((3, t, eh, ew)).astype(np.float32)),)
