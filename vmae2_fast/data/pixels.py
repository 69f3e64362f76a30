"""Clips cross to the device as pixels and are normalised there.

Every loader delivers a clip batch ``(N, 3, T, S, S)`` of pixel values in 0..255, not normalised:

* ``uint8`` wherever the pixels are integers: both pre-training paths (PyAV crops and resizes in
  uint8, as the official PIL path does) and every DALI output (DALI resizes to uint8). A quarter
  of the bytes of float32 cross the bus and the worker pipes;
* ``float32`` for the PyAV classification views, whose bilinear resize runs on floats (as the
  official ``spatial_sampling`` does on its normalised tensor): rounding them to uint8 would
  change the function computed, so they cross as they are.

The stage turns a batch into the model's input with :func:`normalize_on_device`, written directly
in the dtype the model's parameters have: for uint8 one multiply-add per element,
``x * 1/(255 std) - mean/std`` (the uint8 is cast inside the kernel on CUDA), which equals the
official ``ToTensor`` + ``Normalize`` to float32 rounding; for the float views
``(x - 255 mean) / (255 std)``, the official ``tensor_normalize`` of a 0..255 clip.

On the CPU (a CPU run normalises in its main process, between steps) the same arithmetic runs
one (clip, channel) slab at a time with the channel's constants as scalars: a mixed-dtype or
broadcast ``addcmul`` takes torch's slow element-by-element path (about 10x the time of the
vectorised scalar kernels), and a slab stays in the cache between its cast and its
multiply-add. The output is allocated through NumPy, which asks Linux for huge pages on large
arrays: a fresh 40 MB ``torch.empty`` costs ~9,400 page faults at first touch, more than the
arithmetic itself.
Then the cube-erasing boxes of fine-tuning are pasted: they are N(0, 1) noise in NORMALISED
space (the official ``RandomErasing`` runs after normalisation), so they travel beside the pixels
as :data:`Erasure` records and are applied after the normalisation, never to the pixels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Erasure", "normalize_on_device", "norm_affine", "norm_pixels", "host_empty"]

# (clip index in the batch, y0, x0, height, width, noise): ``noise`` is the float32 (3, T, h, w)
# block to write (the PyAV path draws it from the item's generator, so a run is reproducible),
# or None to draw N(0, 1) on the device (the DALI path).
Erasure = Tuple[int, int, int, int, int, Optional[torch.Tensor]]

_AFFINE: dict = {}


def _cached(key, make) -> Tuple[torch.Tensor, torch.Tensor]:
    """``make()`` once per key; under a fake mode (the memory planner's trace) made afresh and never
    cached: its fake tensors would poison the real runs of the same process."""
    from torch._guards import detect_fake_mode
    if detect_fake_mode() is not None:
        return make()
    if key not in _AFFINE:
        _AFFINE[key] = make()
    return _AFFINE[key]


def norm_affine(device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias), float32 on ``device``, shaped (1, 3, 1, 1, 1) to broadcast over a clip batch,
    such that ``x * scale + bias == (x / 255 - mean) / std``. Cached per device."""
    def make():
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
        shape = (1, 3, 1, 1, 1)
        return (1.0 / (255.0 * std)).view(shape).to(device), (-mean / std).view(shape).to(device)
    return _cached((str(device), "affine"), make)


def norm_pixels(device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(255 mean, 255 std), float32 on ``device``, shaped (1, 3, 1, 1, 1); cached per device."""
    def make():
        shape = (1, 3, 1, 1, 1)
        return (torch.tensor(IMAGENET_MEAN).view(shape).mul(255).to(device),
                torch.tensor(IMAGENET_STD).view(shape).mul(255).to(device))
    return _cached((str(device), "pixels"), make)


def normalize_on_device(video: torch.Tensor, dtype: torch.dtype = torch.float32,
                        erase: Optional[Sequence[Erasure]] = None) -> torch.Tensor:
    """ImageNet-normalise a pixel batch ``(N, 3, T, H, W)`` (uint8, or float in 0..255) where it
    lies, into a new tensor of ``dtype``; then paste the cube-erasing noise of ``erase``.

    uint8: one multiply-add computed in float32 and stored in ``dtype`` (one kernel on CUDA, the
    uint8 cast inside it); float: subtract and divide, the classification transform's formula. A
    float input that is already normalised is a caller's bug this cannot see; loaders never
    deliver one."""
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a clip batch (N, 3, T, H, W), got {tuple(video.shape)}")
    if not (video.dtype == torch.uint8 or video.is_floating_point()):
        raise ValueError(f"expected uint8 or float pixels, got {video.dtype}")
    if video.device.type == "cpu" and not is_fake(video):
        out = _normalize_on_host(video, dtype)
    else:
        out = torch.empty(video.shape, dtype=dtype, device=video.device)
        if video.dtype == torch.uint8:
            scale, bias = norm_affine(video.device)
            torch.addcmul(bias, video, scale, out=out)
        else:
            mean255, std255 = norm_pixels(video.device)
            torch.div(video - mean255, std255, out=out)
    for clip, y0, x0, h, w, noise in erase or ():
        box = out[clip, :, :, y0:y0 + h, x0:x0 + w]
        if noise is None:
            box.normal_()                       # per-pixel N(0, 1), one rectangle in every frame
        else:
            box.copy_(noise.to(out.device, non_blocking=True))
    return out


def is_fake(t: torch.Tensor) -> bool:
    """A tensor of torch's fake mode (the memory planner traces a step with them): it has no
    memory, so the host path's NumPy buffer would be a real allocation of the planned size."""
    from torch._subclasses.fake_tensor import is_fake as _is_fake
    return _is_fake(t)


def host_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory comes from NumPy's allocator (huge pages for
    large arrays on Linux, see the module docstring)."""
    import numpy as np
    n = 1
    for d in shape:
        n *= int(d)
    raw = np.empty(n * torch.empty((), dtype=dtype).element_size(), dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).view(tuple(shape))


def _normalize_on_host(video: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`normalize_on_device` on the CPU: the same float32 arithmetic, slab by slab (see the module
    docstring); a slab in another dtype is rounded once from float32."""
    out = host_empty(video.shape, dtype)
    pixels = video.dtype == torch.uint8
    a, b = (t.view(-1).tolist() for t in (norm_affine("cpu") if pixels else norm_pixels("cpu")))
    scratch = None if dtype == torch.float32 else torch.empty(video.shape[2:], dtype=torch.float32)
    for n in range(video.shape[0]):
        for c in range(3):
            o = out[n, c] if scratch is None else scratch
            o.copy_(video[n, c])
            if pixels:
                o.mul_(a[c]).add_(b[c])         # x * 1/(255 std) - mean/std
            else:
                o.sub_(a[c]).div_(b[c])         # (x - 255 mean) / (255 std)
            if scratch is not None:
                out[n, c].copy_(scratch)
    return out
