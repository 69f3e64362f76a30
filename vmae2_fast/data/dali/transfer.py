"""Getting a DALI batch into torch on the device the model trains on.

Three cases, chosen once per loader by :func:`transfer_plan`:

* ``"device"``: DALI decoded on the GPU (``mixed``); its uint8 output is copied into a CUDA
  tensor on the current stream (``feed_ndarray``, a device-to-device copy), nothing crosses the bus.
* ``"pinned"``: DALI decoded on the CPU but training runs on CUDA. The batch is copied once from
  DALI's buffer into page-locked host memory (:func:`pinned_copy`); the loader then sends it with
  ``non_blocking=True`` on a side stream one batch ahead (`device_feed.to_device_ahead`), so the
  copy overlaps the training step instead of going through a pageable staging copy on the
  compute stream.
* ``"host"``: DALI on the CPU and training on the CPU (or no target given): one plain copy out of
  DALI's buffer (DALI reuses its buffers).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

__all__ = ["transfer_plan", "pinned_copy"]


def transfer_plan(dali_device: str, target: Optional[Union[str, torch.device]]) -> str:
    """How a batch decoded by DALI on ``dali_device`` (``"cpu"`` | ``"gpu"``) reaches ``target``
    (the training device; None: wherever DALI left it). See the module docstring."""
    if dali_device not in ("cpu", "gpu"):
        raise ValueError(f"dali_device must be 'cpu' or 'gpu', got {dali_device!r}")
    target = torch.device(target) if target is not None else None
    if dali_device == "gpu":
        if target is not None and target.type != "cuda":
            raise ValueError(f"DALI decodes on the GPU but the batches are wanted on {target}")
        return "device"
    if target is not None and target.type == "cuda":
        return "pinned"
    return "host"


def pinned_copy(array: np.ndarray, pin: bool = True) -> torch.Tensor:
    """A copy of ``array`` in page-locked host memory (``pin=False``: ordinary memory, for tests).

    The memory comes from torch's caching host allocator: it is reused across batches without a
    new ``cudaHostAlloc``, and a block goes back to the cache only after the asynchronous copies
    out of it have completed (torch records an event behind every non-blocking copy from pinned
    memory), so a buffer is never refilled while a copy still reads it."""
    src = torch.from_numpy(np.ascontiguousarray(array))
    out = torch.empty(src.shape, dtype=src.dtype, pin_memory=pin and torch.cuda.is_available())
    return out.copy_(src)
