"""Pixel operations of the CPU (PyAV) data path, in torch: crop + resize (stage 1), ImageNet
normalisation, short-side resize and cube random erasing (stages 2 and 3).

Which box and which frames are decided in ``clip_sampling.py`` (shared with DALI); this module only
moves pixels. Stage 1 matches the official ``DataAugmentationForVideoMAEv2``: the multi-scale box, a
PIL-equivalent bilinear resize, division by 255 and ImageNet normalisation, output ``(C, T, H, W)``;
no flip, no colour jitter; one box for every frame.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .pixels import norm_affine

__all__ = ["crop_resize", "crop_resize_normalize", "to_float_tchw", "normalize", "resize_short_side",
           "draw_cube_erasure", "cube_random_erasing"]


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


def crop_resize_normalize(frames: Union[np.ndarray, torch.Tensor], box: Tuple[int, int, int, int],
                          out_size: int) -> torch.Tensor:
    """`crop_resize`, then ImageNet normalisation -> float32 ``(3, T, S, S)``: what the model
    sees of one view (the loaders leave the normalisation to the device)."""
    x = crop_resize(frames, box, out_size)
    scale, bias = norm_affine(x.device, ndim=4)
    return torch.addcmul(bias, x.to(torch.float32), scale)


def to_float_tchw(frames) -> torch.Tensor:
    return torch.as_tensor(frames).permute(0, 3, 1, 2).float()          # (T, 3, H, W), 0..255


def normalize(x_tchw: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) in 0..255 -> (3, T, H, W) ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return ((x_tchw - mean) / std).permute(1, 0, 2, 3).contiguous()


def resize_short_side(x_tchw: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x_tchw.shape[-2:]
    if min(h, w) == size:
        return x_tchw
    nh, nw = (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)
    return F.interpolate(x_tchw, size=(nh, nw), mode="bilinear", align_corners=False)


def draw_cube_erasure(t: int, h: int, w: int, rng: np.random.Generator, prob: float = 0.25,
                      area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3))):
    """The official cube random erasing's draws for a ``(3, t, h, w)`` clip: None (not erased),
    or ``(y0, x0, eh, ew, noise)``, one box for every frame and its float32 ``(3, t, eh, ew)``
    N(0, 1) noise, to be written over the NORMALISED clip."""
    if prob <= 0 or rng.random() >= prob:
        return None
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        ar = math.exp(rng.uniform(*log_ratio))
        eh, ew = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if eh < h and ew < w:
            y0, x0 = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            noise = torch.from_numpy(rng.standard_normal((3, t, eh, ew)).astype(np.float32))
            return y0, x0, eh, ew, noise
    return None


def cube_random_erasing(x: torch.Tensor, rng: np.random.Generator, prob: float = 0.25,
                        area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3))) -> torch.Tensor:
    """One box (same in every frame) of normal noise on a normalised ``(3, T, H, W)`` clip."""
    box = draw_cube_erasure(*x.shape[1:], rng, prob, area, log_ratio)
    if box is None:
        return x
    y0, x0, eh, ew, noise = box
    x = x.clone()
    x[:, :, y0:y0 + eh, x0:x0 + ew] = noise
    return x
