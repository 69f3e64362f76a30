"""Host batches to the device one batch ahead, on a side CUDA stream, so the copy of batch i+1
overlaps the step that computes on batch i.

``to_device_ahead(batches, device)`` wraps any iterator of batches (the types of `batches`, or
tuples and lists, nested, of tensors and anything else). When batch i is asked for, batch i+1 is taken from ``batches`` and
its host tensors are sent with ``non_blocking=True`` on the feeder's own stream; batch i, whose
copy was issued one call earlier, is returned after the consumer's current stream has been made
to wait for it (a GPU-side wait, no host sync) and its tensors have been marked as used on that
stream (``record_stream``: the caching allocator then never hands their memory out while the
step may still read it).

The copies are asynchronous only from page-locked memory: DataLoader(pin_memory=True) pins the
PyAV batches in its own thread, the DALI CPU path writes into pinned buffers; a pinned buffer goes
back to torch's caching host allocator only after the copy out of it has completed, so there is
no buffer ring to manage. Tensors already on the device pass through untouched. On a CPU device
this is the identity: the loaders' own workers and threads already decode ahead of the step.
"""
from __future__ import annotations

import collections
from typing import Iterable, Iterator, List

import torch

from .batches import map_tensors

__all__ = ["to_device_ahead"]


def _move(batch, device: torch.device, moved: List[torch.Tensor]):
    """``batch`` with every host tensor replaced by a non-blocking copy on ``device`` (issued on
    the current stream); the copies are appended to ``moved``."""
    def send(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "cpu":
            return t
        t = t.to(device, non_blocking=True)
        moved.append(t)
        return t
    return map_tensors(batch, send)


def to_device_ahead(batches: Iterable, device, ahead: int = 1) -> Iterator:
    """Yield the batches of ``batches`` with their tensors on ``device``, the copies issued
    ``ahead`` batches early on a side stream (see the module docstring). Closing this generator
    closes ``batches`` (a DALI epoch drops its scheduled work; a DataLoader stops its workers)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        yield from batches
        return
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    side = torch.cuda.Stream(device)
    pending = collections.deque()
    it = iter(batches)

    def ready(batch, event, moved):
        current = torch.cuda.current_stream(device)
        current.wait_event(event)            # the step waits on the GPU, the host does not
        for t in moved:
            t.record_stream(current)
        return batch

    try:
        for batch in it:
            moved: List[torch.Tensor] = []
            with torch.cuda.stream(side):
                batch = _move(batch, device, moved)
                event = torch.cuda.Event()
                event.record(side)
            pending.append((batch, event, moved))
            if len(pending) > ahead:
                yield ready(*pending.popleft())
        while pending:
            yield ready(*pending.popleft())
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
