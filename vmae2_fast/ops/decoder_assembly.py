"""Decoder input assembly: the running-cell decoder's sequence, visible tokens first.

    decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)
        = [z @ W^T + pos[vis_idx], mask_token + pos[dec_idx]]      (B, N_vis + N_dec, C_d)

The official code projects, adds the full table expanded to the batch, and concatenates with a
mask-token tensor built for every token; here only the rows the decoder reads are formed.

Backends (`ops.backend`): `reference` below (the spec); Triton, `kernels/decoder_assembly.py` (the
GEMM with the table gather as its epilogue and the mask-token rows in the same launch); C++,
`csrc/decoder_assembly.cpp`. The backward is three GEMM-shaped reductions, the same for every
backend (`_grads`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpp, library
from .backends import active_backend, resolve, triton_kernels
from .common import acc_dtype, autocast_to, compute_dtype, gather_table, matmul_precision, table_grad


def reference(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    """`[z @ W^T + pos[vis], mask_token + pos[dec]]`, (B, N_vis + N_dec, C_d)."""
    visible = F.linear(z, proj_weight)
    visible = visible + gather_table(pos_table, vis_idx).to(visible.dtype)
    masked = mask_token.to(visible.dtype) + gather_table(pos_table, dec_idx).to(visible.dtype)
    return torch.cat([visible, masked], dim=1)


def _forward(backend, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype):
    if backend == "triton":
        return triton_kernels("decoder_assembly").forward(z, proj_weight, pos_table, vis_idx, dec_idx,
                                                       mask_token, out_dtype, matmul_precision(z.device))
    if backend == "cpp":
        return cpp.load().decoder_forward(z, proj_weight, pos_table.reshape(-1, proj_weight.shape[0]),
                                          vis_idx, dec_idx, mask_token, out_dtype)
    with autocast_to(out_dtype, z.device):
        return reference(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)


def _grads(grad, z, w, pos_table, vis_idx, dec_idx, mask_token, out_dtype, needs):
    """(grad_z, grad_weight, grad_pos, grad_token), None where `needs` says so: the GEMMs in the
    forward's dtype, the table scatter and the token sum in the accumulation dtype."""
    nv = z.shape[1]
    g_vis = grad[:, :nv].to(out_dtype)
    gz = gw = gp = gt = None
    if needs[0]:
        gz = (g_vis @ w.to(out_dtype)).to(z.dtype)
    if needs[1]:
        gw = (g_vis.reshape(-1, w.shape[0]).t() @ z.reshape(-1, z.shape[2]).to(out_dtype)).to(w.dtype)
    if needs[2]:
        gp = table_grad(grad[:, :nv], vis_idx, pos_table)
        gp += table_grad(grad[:, nv:], dec_idx, pos_table)
    if needs[3]:
        gt = grad[:, nv:].sum((0, 1), dtype=acc_dtype(out_dtype)).to(mask_token.dtype)
        gt = gt.view(mask_token.shape)
    return gz, gw, gp, gt


# --------------------------------------------------------------------------- the registered op
def _kernel(z: Tensor, proj_weight: Tensor, pos_table: Tensor, vis_idx: Tensor, dec_idx: Tensor,
            mask_token: Tensor, out_dtype: torch.dtype) -> Tensor:
    with library.no_autocast(z.device):
        return _forward(resolve(z.device), z, proj_weight, pos_table, vis_idx, dec_idx, mask_token,
                        out_dtype)


_op = library.register("decoder_input", _kernel)


@_op.register_fake
def _(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype):
    return z.new_empty((z.shape[0], z.shape[1] + dec_idx.shape[1], proj_weight.shape[0]), dtype=out_dtype)


def _backward_kernel(grad: Tensor, z: Tensor, proj_weight: Tensor, pos_table: Tensor, vis_idx: Tensor,
                     dec_idx: Tensor, mask_token: Tensor, out_dtype: torch.dtype, need_z: bool,
                     need_weight: bool, need_pos: bool, need_token: bool
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    needs = (need_z, need_weight, need_pos, need_token)
    with library.no_autocast(grad.device):
        grads = _grads(grad, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype, needs)
    return library.or_empty(grads, grad)


_backward = library.register("decoder_input_backward", _backward_kernel)


@_backward.register_fake
def _(grad, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype, need_z, need_weight,
      need_pos, need_token):
    likes = (z, proj_weight, pos_table, mask_token)
    needs = (need_z, need_weight, need_pos, need_token)
    return tuple(torch.empty_like(t) if need else grad.new_empty(0) for t, need in zip(likes, needs))


def _setup(ctx, inputs, output):
    z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype = inputs
    ctx.save_for_backward(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)
    ctx.out_dtype = out_dtype


def _grad(ctx, grad):
    n = ctx.needs_input_grad
    needs = (n[0], n[1], n[2], n[5])
    gz, gw, gp, gt = library.or_none(_backward(grad, *ctx.saved_tensors, ctx.out_dtype, *needs), needs)
    return gz, gw, gp, None, None, gt, None


_op.register_autograd(_grad, setup_context=_setup)


def decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    """The decoder sequence (B, N_vis + N_dec, C_d): visible tokens first, mask tokens last."""
    if active_backend() == "reference":
        return reference(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)
    out_dtype = compute_dtype(z.device, z.dtype, proj_weight.dtype)
    return _op(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype)
