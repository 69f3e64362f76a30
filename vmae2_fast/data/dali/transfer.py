"""Getting a DALI batch into torch on the device the model trains on.

Three cases, chosen once per loader by :func:`transfer_plan`:

* ``"device"``: DALI decoded on the GPU (``mixed``); its output is copied into a CUDA tensor on
  the current stream (``feed_ndarray``), nothing crosses the bus.
* ``"pinned"``: DALI decoded on the CPU but training runs on CUDA. The batch is copied once from
  DALI's buffer into a reusable page-locked host buffer and sent with ``non_blocking=True``, so the
  copy to the GPU overlaps the training step instead of going through a pageable staging copy.
* ``"host"``: DALI on the CPU and training on the CPU (or no target given): one plain copy out of
  DALI's buffer (DALI reuses its buffers), as before.
"""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch

__all__ = ["transfer_plan", "PinnedStager", "PLANS"]

PLANS = ("device", "pinned", "host")


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


class PinnedStager:
    """A ring of ``slots`` page-locked host buffers; ``stager(array)`` copies ``array`` into the
    next one and returns ``buffer.to(device, non_blocking=True)``.

    A slot is rewritten only after the CUDA event recorded behind its last copy has completed, so
    the asynchronous copy never reads a buffer that is being refilled. Buffers grow to the largest
    batch seen and are reused (a smaller last batch is a view of the same memory).
    ``pin=False`` keeps ordinary memory (the ring logic can then be tested without CUDA)."""

    def __init__(self, device: Union[str, torch.device], slots: int = 2, pin: bool = True):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.device = torch.device(device)
        self.pin = pin
        self.buffers: List[Optional[torch.Tensor]] = [None] * slots
        self.events: List[Optional[object]] = [None] * slots
        self.next = 0

    def _buffer(self, slot: int, src: torch.Tensor) -> torch.Tensor:
        buf = self.buffers[slot]
        if buf is None or buf.dtype != src.dtype or buf.numel() < src.numel():
            buf = torch.empty(src.numel(), dtype=src.dtype, pin_memory=self.pin)
            self.buffers[slot] = buf
        return buf[:src.numel()].view(src.shape)

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        slot, self.next = self.next, (self.next + 1) % len(self.buffers)
        if self.events[slot] is not None:
            self.events[slot].synchronize()       # the previous copy out of this slot is done
        src = torch.from_numpy(np.ascontiguousarray(array))
        staged = self._buffer(slot, src)
        staged.copy_(src)
        out = staged.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.events[slot] = event
        return out
