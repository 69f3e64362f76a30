"""The batches the loaders yield: one small type per kind, the same whichever decoder made it.

* :class:`PretrainBatch` (stage 1): ``video`` only;
* :class:`ClassifyBatch` (fine-tuning, distillation): ``video``, one label per clip and the
  cube-erasing records (`pixels.Erasure`) to paste after normalisation;
* :class:`EvalBatch` (validation, multi-view test): ``video`` holding V consecutive views per
  video, one label and one path per video.

Every batch has ``video``, pixels ``(N, 3, T, S, S)`` in 0..255, not normalised (see `pixels`),
and ``skipped``, the ``(path, reason)`` of each unreadable video the batch passed over (the
trainer lists each file once). A training ``video`` is None when an item found no readable video
at all (the trainer stops with the counts); an evaluation batch whose videos were all unreadable
has ``video`` None too.

The batches move like tensors: ``pin_memory()`` (what ``DataLoader(pin_memory=True)`` calls on
an object that has it) and ``to(device, non_blocking)`` act on every tensor inside, the erasing
noise included; `map_tensors` is the one walk both use, and the copy-ahead feed
(`device_feed.to_device_ahead`) uses it too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = ["PretrainBatch", "ClassifyBatch", "EvalBatch", "map_tensors"]

Skipped = Tuple[Tuple[str, str], ...]


def map_tensors(obj, fn: Callable[[torch.Tensor], torch.Tensor]):
    """``obj`` with ``fn`` applied to every tensor in it: in a batch's fields, and in tuples and
    lists nested in them (a new object; ``obj`` is not changed). Anything else is kept as is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(x, fn) for x in obj)
    if isinstance(obj, list):
        return [map_tensors(x, fn) for x in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj)})
    return obj


class _Moves:
    """What makes a batch move like a tensor."""

    def pin_memory(self):
        return map_tensors(self, lambda t: t.pin_memory() if t.device.type == "cpu" else t)

    def to(self, device, non_blocking: bool = False):
        return map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))


@dataclass
class PretrainBatch(_Moves):
    video: Optional[torch.Tensor]                # (B*K, 3, T, S, S), K views per video, sample-major
    skipped: Skipped = ()


@dataclass
class ClassifyBatch(_Moves):
    video: Optional[torch.Tensor]                # (B*K, 3, T, S, S), K views per video, sample-major
    labels: Optional[torch.Tensor]               # (B*K,) int64, one per clip
    erasures: List[tuple] = field(default_factory=list)    # `pixels.Erasure` records, by clip
    skipped: Skipped = ()


@dataclass
class EvalBatch(_Moves):
    video: Optional[torch.Tensor]                # (B*V, 3, T, S, S), the V views of a video consecutive
    labels: Optional[torch.Tensor]               # (B,) int64, one per video
    paths: Sequence[str] = ()                    # one per video, in the batch's order
    skipped: Skipped = ()
