"""The only place a model is wrapped for training: data parallelism and torch.compile.

Order: DDP first, torch.compile over it. Compiling the model inside DDP's wrapper (the old order)
hands DDP one graph whose gradients all become ready at the end of the backward pass, so the
all-reduce cannot overlap it; compiling the DDP module lets TorchDynamo's DDP optimizer split the
graph at DDP's bucket boundaries, so buckets are reduced while the rest of the backward runs.

The Trainer never touches DDP: it asks `grad_sync(model, sync)` for the context that skips the
gradient all-reduce on accumulation micro-batches.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["parallelize", "grad_sync"]


def parallelize(model: nn.Module, device: torch.device, dist, *, compile: bool = False) -> nn.Module:
    """The module the training step calls. `model` itself stays the one checkpoints hold."""
    wrapped = model
    if dist.enabled:
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def _ddp(wrapped: nn.Module):
    inner = getattr(wrapped, "_orig_mod", wrapped)          # under torch.compile
    return inner if isinstance(inner, DistributedDataParallel) else None


def grad_sync(wrapped: nn.Module, sync: bool):
    """A context for one backward pass: as usual when `sync`, without DDP's gradient all-reduce
    otherwise (gradients accumulate locally until the micro-batch that syncs)."""
    ddp = _ddp(wrapped)
    if sync or ddp is None:
        return contextlib.nullcontext()
    return ddp.no_sync()
