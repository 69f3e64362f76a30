"""Getting a DALI batch into torch on the device the model trains on.

Three cases, chosen once per loader by :func:`transfer_plan`:

* ``"device"``: DALI decoded on the GPU (``mixed``); its uint8 output is copied into a CUDA
  tensor on the current stream (``feed_ndarray``, a device-to-device copy), nothing crosses the
  bus. The copy is only queued there, so DALI's output is kept alive until it has run
  (:class:`HeldOutputs`, :func:`device_copy`).
* ``"pinned"``: DALI decoded on the CPU but training runs on CUDA. The batch is copied once from
  DALI's buffer into page-locked host memory (:func:`pinned_copy`); the loader then sends it with
  ``non_blocking=True`` on a side stream one batch ahead (`device_feed.to_device_ahead`), so the
  copy overlaps the training step instead of going through a pageable staging copy on the
  compute stream.
* ``"host"``: DALI on the CPU and training on the CPU (or no target given): one plain copy out of
  DALI's buffer (DALI reuses its buffers).
"""
from __future__ import annotations

import collections
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["transfer_plan", "pinned_copy", "HeldOutputs", "device_copy"]


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


class HeldOutputs:
    """DALI outputs kept alive until the GPU has run the copies out of them.

    Why: `device_copy` queues its copy on the consumer's stream (torch's current stream), behind
    the training steps already queued there; the host runs ahead of the GPU by a step or two
    (the step makes no host syncs), so the copy may run well after the loader has moved on.
    DALI's rule (docs: TensorList, `Pipeline.outputs`) is that an output is valid until the next
    `outputs()` / `release_outputs()` of its pipeline; under the dynamic executor the graph uses
    (``exec_dynamic=True``), an output instead lives as long as a reference to it, and its memory
    is then freed in the order of DALI's own stream, which knows nothing of the copy queued on
    torch's. Either way the next iterations (scheduled as soon as a batch is taken) may be handed
    the same memory and write into it before the queued copy has read it. So each output is held
    here with a CUDA event recorded after its copy and let go once that event has completed:
    looked at, without waiting, on every new batch; waited for only while more than ``limit``
    are held (the GPU is then that many batches behind, and the wait is the back-pressure).
    """

    def __init__(self, limit: int = 4):
        self.limit = int(limit)
        self.held: collections.deque = collections.deque()     # (sources, event), in copy order

    def add(self, sources, stream) -> None:
        """Hold ``sources`` until the work queued on ``stream`` so far (their copy) has run."""
        event = torch.cuda.Event()
        event.record(stream)
        self.held.append((sources, event))
        # One stream, so the events complete in order: stop at the first that has not.
        while self.held and self.held[0][1].query():
            self.held.popleft()
        while len(self.held) > self.limit:
            self.held[0][1].synchronize()      # wait, THEN let go (not the other way round)
            self.held.popleft()

    def release_all(self) -> None:
        """Wait for every held copy, then let the outputs go (a pipeline about to be dropped)."""
        while self.held:
            self.held[0][1].synchronize()
            self.held.popleft()

    def __len__(self) -> int:
        return len(self.held)


def device_copy(out, device: torch.device, held: HeldOutputs) -> torch.Tensor:
    """The DALI GPU output ``out`` (a TensorList; ``Pipeline.outputs()`` without a stream has
    already waited until it is ready) copied into a new uint8 tensor on ``device``, on the current
    stream, without waiting for the copy; ``out`` stays in ``held`` until the copy has run."""
    from nvidia.dali.plugin.pytorch import feed_ndarray
    t = out.as_tensor()                  # may be a dense copy of the list: hold both
    stream = torch.cuda.current_stream(device)
    dst = torch.empty(t.shape(), dtype=torch.uint8, device=device)
    feed_ndarray(t, dst, cuda_stream=stream)
    held.add((out, t), stream)
    return dst
