"""Visible patch embedding: the encoder's tokens for the visible cubes only.

    visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size) -> (B, N_vis, C_e)

equals the official `conv3d(video)` flattened to tokens, plus the position table, then gathered at
`vis_idx`, but spends the projection on the visible tokens only (10 % of them at ratio 0.9).
weight is the Conv3d weight (C_e, C, t, p, p), bias (C_e,), pos_table (1, N, C_e).

Backends (`ops.backend`): `reference` below (the spec); Triton, `kernels/patch_embed.py` (the
cubes gathered straight from the video inside the GEMM); C++, `csrc/patch_embed.cpp`. Every backend
computes in the dtype `compute_dtype` gives and returns the gradients of weight, bias and table;
none gives one to the video. The weight gradient re-gathers the cubes from the video, so neither
the token grid nor the gathered cubes are kept between forward and backward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpp, library
from .backends import active_backend, resolve, triton_kernels
from .common import (acc_dtype, autocast_to, check_video, compute_dtype, gather_table, gather_tokens,
                     matmul_precision, patchify, refuse_video_grad, table_grad)


def reference(video, weight, bias, pos_table, vis_idx, tubelet_size: int):
    """Embed only the encoder-visible cubes: gather them from the raw video, then project."""
    cubes = gather_tokens(patchify(video, weight.shape[-1], tubelet_size), vis_idx)
    tokens = F.linear(cubes, weight.reshape(weight.shape[0], -1), bias)
    return tokens + gather_table(pos_table, vis_idx).to(tokens.dtype)


# ---------------------------------------------------------------------------------- per backend
def _forward(backend, video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype):
    if backend == "triton":
        return triton_kernels("patch_embed").forward(video, weight, bias, pos_table, vis_idx, out_dtype,
                                                     matmul_precision(video.device))
    if backend == "cpp":
        ce, p = weight.shape[0], weight.shape[-1]
        out = cpp.load().embed_forward(video, weight.reshape(ce, -1), bias, pos_table.reshape(-1, ce),
                                       vis_idx, p, tubelet_size, out_dtype)
        return out.view(*vis_idx.shape, ce)
    with autocast_to(out_dtype, video.device):
        return reference(video, weight, bias, pos_table, vis_idx, tubelet_size)


def _weight_grad(backend, grad, video, weight, vis_idx, tubelet_size, out_dtype):
    if backend == "triton":
        return triton_kernels("patch_embed").weight_grad(grad, video, weight, vis_idx, out_dtype,
                                                         matmul_precision(video.device))
    def cubes():            # gathered again from the video, never kept from the forward
        p = weight.shape[-1]
        if backend == "cpp":
            return cpp.load().gather_cubes(video, vis_idx, p, tubelet_size)
        rows = patchify(video, p, tubelet_size)
        return gather_tokens(rows, vis_idx).reshape(-1, rows.shape[-1])
    g = grad.reshape(-1, weight.shape[0]).to(out_dtype)
    return (g.t() @ cubes().to(out_dtype)).view_as(weight).to(weight.dtype)


# --------------------------------------------------------------------------- the registered op
def _kernel(video: Tensor, weight: Tensor, bias: Optional[Tensor], pos_table: Tensor, vis_idx: Tensor,
            tubelet_size: int, out_dtype: torch.dtype) -> Tensor:
    with library.no_autocast(video.device):
        return _forward(resolve(video.device), video, weight, bias, pos_table, vis_idx, tubelet_size,
                        out_dtype)


_op = library.register("visible_patch_embed", _kernel)


@_op.register_fake
def _(video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype):
    return video.new_empty((*vis_idx.shape, weight.shape[0]), dtype=out_dtype)


def _backward_kernel(grad: Tensor, video: Tensor, weight: Tensor, pos_table: Tensor, vis_idx: Tensor,
                     tubelet_size: int, out_dtype: torch.dtype, bias_dtype: torch.dtype,
                     need_weight: bool, need_bias: bool, need_pos: bool) -> tuple[Tensor, Tensor, Tensor]:
    gw = gb = gp = None
    with library.no_autocast(grad.device):
        if need_weight:
            gw = _weight_grad(resolve(grad.device), grad, video, weight, vis_idx, tubelet_size, out_dtype)
        if need_bias:
            gb = grad.reshape(-1, weight.shape[0]).sum(0, dtype=acc_dtype(grad.dtype)).to(bias_dtype)
        if need_pos:
            gp = table_grad(grad, vis_idx, pos_table)
    return library.or_empty((gw, gb, gp), grad)


_backward = library.register("visible_patch_embed_backward", _backward_kernel)


@_backward.register_fake
def _(grad, video, weight, pos_table, vis_idx, tubelet_size, out_dtype, bias_dtype, need_weight,
      need_bias, need_pos):
    empty = grad.new_empty(0)
    return (torch.empty_like(weight) if need_weight else empty,
            weight.new_empty(weight.shape[0], dtype=bias_dtype) if need_bias else empty,
            torch.empty_like(pos_table) if need_pos else empty)


def _setup(ctx, inputs, output):
    video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype = inputs
    ctx.save_for_backward(video, weight, pos_table, vis_idx)
    ctx.args = (tubelet_size, out_dtype, weight.dtype if bias is None else bias.dtype)
    ctx.has_bias = bias is not None


def _grad(ctx, grad):
    n = ctx.needs_input_grad
    needs = (n[1], n[2] and ctx.has_bias, n[3])
    grads = _backward(grad, *ctx.saved_tensors, *ctx.args, *needs)
    return (None, *library.or_none(grads, needs), None, None, None)


_op.register_autograd(_grad, setup_context=_setup)


def visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size: int):
    """Tokens (B, N_vis, C_e) of the visible cubes: conv3d(video) + pos, gathered at vis_idx."""
    if active_backend() == "reference":
        return reference(video, weight, bias, pos_table, vis_idx, tubelet_size)
    if weight.ndim != 5 or weight.shape[2] != tubelet_size:
        raise ValueError(f"weight must be the Conv3d weight (C_e, C, {tubelet_size}, p, p), "
                         f"got {tuple(weight.shape)}")
    check_video(video, weight.shape[-1], tubelet_size)
    refuse_video_grad(video)
    out_dtype = compute_dtype(video.device, video.dtype, weight.dtype)
    return _op(video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype)
