"""torch.library plumbing the three fused ops share.

Each op is a custom op (`torch.ops.vmae2_fast.<name>`) with a second custom op for its backward,
wired together by `register_autograd`: torch.compile keeps each one whole (one node in the graph,
no graph break) in the forward and the backward pass, and the kernel picks the backend when it
runs (`backend.resolve`), never while torch.compile traces.

Dtypes are explicit arguments: the caller reads the autocast state (`common.compute_dtype`) and
passes the result. Inside a compiled graph autocast has already been applied when the op runs, so
an op that read the autocast state itself would compute in another dtype than its fake promised;
the kernels run with autocast off for the same reason.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

OPS: dict = {}        # qualified name ("vmae2_fast::decoder_input") -> the registered op
# The Python kernel of each op by its qualified name: lets a checker run an op's kernel under its
# own dispatch mode (see vmae2_fast.testing.host_sync), which otherwise sees only the op itself.
KERNELS: dict = {}


def register(name: str, kernel):
    """`torch.library.custom_op` for `vmae2_fast::<name>`, its kernel kept in KERNELS."""
    qualified = f"vmae2_fast::{name}"
    op = torch.library.custom_op(qualified, kernel, mutates_args=())
    OPS[qualified], KERNELS[qualified] = op, kernel
    return op


def no_autocast(device: torch.device):
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def or_empty(grads, like: Tensor):
    """Custom ops return tensors only: a gradient not asked for travels as an empty tensor."""
    return tuple(like.new_empty(0) if g is None else g for g in grads)


def or_none(grads, needs):
    return tuple(g if need else None for g, need in zip(grads, needs))
