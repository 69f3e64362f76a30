"""The three fused ops registered as torch.library custom ops, so that torch.compile keeps each
one whole (one node in the graph, no graph break) in the forward and in the backward pass.

    torch.ops.vmae2_fast.visible_patch_embed     (+ visible_patch_embed_backward)
    torch.ops.vmae2_fast.decoder_input           (+ decoder_input_backward)
    torch.ops.vmae2_fast.masked_mse_per_token    (+ masked_mse_per_token_backward)

Each op's kernel picks the face when it runs (`ops._impl`: Triton for CUDA tensors, C++ for CPU
tensors, as `ops.use_backend` says), so the choice and its log line happen at run time, never
while torch.compile traces. A fake implementation gives torch.compile the output shapes and
dtypes; the backward is a second custom op, registered with `register_autograd`.

Dtypes are explicit arguments: the caller reads the autocast state (`compute_dtype`) and passes
the result. Inside a compiled graph autocast has already been applied when the op runs, so an op
that read the autocast state itself would compute in another dtype than its fake promised. The
kernels run with autocast off for the same reason.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..kernels.rules import (compute_dtype, decoder_grads, embed_grads, masked_token_mean, num_tokens,
                             refuse_video_grad)
from . import reference

__all__ = ["visible_patch_embed", "decoder_input", "masked_mse", "masked_mse_per_token", "OPS",
           "KERNELS"]


OPS: dict = {}        # name -> the registered op
# The Python kernel of each op by its name: lets a checker run an op's kernel under its own
# dispatch mode (see vmae2_fast.testing.host_sync), which otherwise sees only the op itself.
KERNELS: dict = {}


def _register(name: str, kernel):
    op = torch.library.custom_op(name, kernel, mutates_args=())
    OPS[name], KERNELS[name] = op, kernel
    return op


def _face(device: torch.device):
    from . import _impl                      # the dispatch (ops/__init__), which logs its choice once
    face = _impl(device)
    return _ReferenceFace if face is reference else face


def _no_autocast(device: torch.device):
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _or_empty(grads, like: Tensor):
    """Custom ops return tensors only: a gradient not asked for travels as an empty tensor."""
    return tuple(like.new_empty(0) if g is None else g for g in grads)


def _or_none(grads, needs):
    return tuple(g if need else None for g, need in zip(grads, needs))


def mse_dtype(video: Tensor) -> torch.dtype:
    """The per-token errors' dtype (the reference's): float64 for float64 video, else float32."""
    return torch.promote_types(video.dtype, torch.float32)


# ------------------------------------------------------------------------ visible patch embedding
def _embed_kernel(video: Tensor, weight: Tensor, bias: Optional[Tensor], pos_table: Tensor,
                  vis_idx: Tensor, tubelet_size: int, out_dtype: torch.dtype) -> Tensor:
    with _no_autocast(video.device):
        return _face(video.device).embed_forward(video, weight, bias, pos_table, vis_idx,
                                                 tubelet_size, out_dtype)


_embed = _register("vmae2_fast::visible_patch_embed", _embed_kernel)


@_embed.register_fake
def _(video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype):
    return video.new_empty((*vis_idx.shape, weight.shape[0]), dtype=out_dtype)


def _embed_bwd_kernel(grad: Tensor, video: Tensor, weight: Tensor, pos_table: Tensor,
                      vis_idx: Tensor, tubelet_size: int, out_dtype: torch.dtype,
                      bias_dtype: torch.dtype, need_weight: bool, need_bias: bool,
                      need_pos: bool) -> tuple[Tensor, Tensor, Tensor]:
    with _no_autocast(grad.device):
        grads = _face(grad.device).embed_backward(grad, video, weight, pos_table, vis_idx, tubelet_size,
                                                  out_dtype, bias_dtype, (need_weight, need_bias, need_pos))
    return _or_empty(grads, grad)


_embed_bwd = _register("vmae2_fast::visible_patch_embed_backward", _embed_bwd_kernel)


@_embed_bwd.register_fake
def _(grad, video, weight, pos_table, vis_idx, tubelet_size, out_dtype, bias_dtype, need_weight,
      need_bias, need_pos):
    empty = grad.new_empty(0)
    return (torch.empty_like(weight) if need_weight else empty,
            weight.new_empty(weight.shape[0], dtype=bias_dtype) if need_bias else empty,
            torch.empty_like(pos_table) if need_pos else empty)


def _embed_setup(ctx, inputs, output):
    video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype = inputs
    ctx.save_for_backward(video, weight, pos_table, vis_idx)
    ctx.args = (tubelet_size, out_dtype, weight.dtype if bias is None else bias.dtype)
    ctx.has_bias = bias is not None


def _embed_grad(ctx, grad):
    n = ctx.needs_input_grad
    needs = (n[1], n[2] and ctx.has_bias, n[3])
    grads = torch.ops.vmae2_fast.visible_patch_embed_backward(grad, *ctx.saved_tensors, *ctx.args, *needs)
    return (None, *_or_none(grads, needs), None, None, None)


_embed.register_autograd(_embed_grad, setup_context=_embed_setup)


# ------------------------------------------------------------------------ decoder input assembly
def _decoder_kernel(z: Tensor, proj_weight: Tensor, pos_table: Tensor, vis_idx: Tensor,
                    dec_idx: Tensor, mask_token: Tensor, out_dtype: torch.dtype) -> Tensor:
    with _no_autocast(z.device):
        return _face(z.device).decoder_forward(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token,
                                               out_dtype)


_decoder = _register("vmae2_fast::decoder_input", _decoder_kernel)


@_decoder.register_fake
def _(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype):
    return z.new_empty((z.shape[0], z.shape[1] + dec_idx.shape[1], proj_weight.shape[0]), dtype=out_dtype)


def _decoder_bwd_kernel(grad: Tensor, z: Tensor, proj_weight: Tensor, pos_table: Tensor,
                        vis_idx: Tensor, dec_idx: Tensor, mask_token: Tensor,
                        out_dtype: torch.dtype, need_z: bool, need_weight: bool, need_pos: bool,
                        need_token: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    needs = (need_z, need_weight, need_pos, need_token)
    with _no_autocast(grad.device):
        grads = _face(grad.device).decoder_backward(grad, z, proj_weight, pos_table, vis_idx, dec_idx,
                                                    mask_token, out_dtype, needs)
    return _or_empty(grads, grad)


_decoder_bwd = _register("vmae2_fast::decoder_input_backward", _decoder_bwd_kernel)


@_decoder_bwd.register_fake
def _(grad, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype, need_z, need_weight,
      need_pos, need_token):
    likes = (z, proj_weight, pos_table, mask_token)
    needs = (need_z, need_weight, need_pos, need_token)
    return tuple(torch.empty_like(t) if need else grad.new_empty(0) for t, need in zip(likes, needs))


def _decoder_setup(ctx, inputs, output):
    z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype = inputs
    ctx.save_for_backward(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)
    ctx.out_dtype = out_dtype


def _decoder_grad(ctx, grad):
    n = ctx.needs_input_grad
    needs = (n[0], n[1], n[2], n[5])
    gz, gw, gp, gt = _or_none(torch.ops.vmae2_fast.decoder_input_backward(
        grad, *ctx.saved_tensors, ctx.out_dtype, *needs), needs)
    return gz, gw, gp, None, None, gt, None


_decoder.register_autograd(_decoder_grad, setup_context=_decoder_setup)


# ------------------------------------------------------------------------ masked MSE (per token)
def _mse_kernel(pred: Tensor, video: Tensor, dec_idx: Tensor, patch_size: int, tubelet_size: int,
                normalize: bool, eps: float, mean: list[float], std: list[float]) -> Tensor:
    with _no_autocast(video.device):
        out = _face(video.device).mse_forward(pred, video, dec_idx, patch_size, tubelet_size, normalize,
                                              eps, mean, std)
    return out.to(mse_dtype(video))      # the C++ face keeps float64 for float64 predictions


_mse = _register("vmae2_fast::masked_mse_per_token", _mse_kernel)


@_mse.register_fake
def _(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
    return dec_idx.new_empty(dec_idx.shape, dtype=mse_dtype(video), device=video.device)


def _mse_bwd_kernel(grad: Tensor, pred: Tensor, video: Tensor, dec_idx: Tensor, patch_size: int,
                    tubelet_size: int, normalize: bool, eps: float, mean: list[float],
                    std: list[float]) -> Tensor:
    with _no_autocast(video.device):
        return _face(video.device).mse_backward(grad, pred, video, dec_idx, patch_size, tubelet_size,
                                                normalize, eps, mean, std)


_mse_bwd = _register("vmae2_fast::masked_mse_per_token_backward", _mse_bwd_kernel)


@_mse_bwd.register_fake
def _(grad, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
    return pred.new_empty(pred.shape)


def _mse_setup(ctx, inputs, output):
    pred, video, dec_idx, *args = inputs
    ctx.save_for_backward(pred, video, dec_idx)
    ctx.args = args


def _mse_grad(ctx, grad):
    if not ctx.needs_input_grad[0]:
        return (None,) * 9
    gp = torch.ops.vmae2_fast.masked_mse_per_token_backward(grad, *ctx.saved_tensors, *ctx.args)
    return (gp,) + (None,) * 8


_mse.register_autograd(_mse_grad, setup_context=_mse_setup)



# ------------------------------------------------------------------------ the front door's calls
def visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size: int):
    refuse_video_grad(video)
    out_dtype = compute_dtype(video.device, video.dtype, weight.dtype)
    return _embed(video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype)


def decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    out_dtype = compute_dtype(z.device, z.dtype, proj_weight.dtype)
    return _decoder(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype)


def masked_mse_per_token(pred, video, dec_idx, patch_size: int, tubelet_size: int, normalize=True,
                         eps: float = 1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    refuse_video_grad(video)
    return _mse(pred, video, dec_idx, patch_size, tubelet_size, bool(normalize), float(eps),
                [float(x) for x in mean], [float(x) for x in std])


def masked_mse(pred, video, vis_idx, dec_idx, patch_size: int, tubelet_size: int, normalize=True,
               denominator=None, eps: float = 1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    per_token = masked_mse_per_token(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps,
                                     mean, std)
    return masked_token_mean(per_token, vis_idx, dec_idx, num_tokens(video, patch_size, tubelet_size),
                             denominator)


# ------------------------------------------------------------------------ the reference as a face
class _ReferenceFace:
    """The plain-PyTorch reference in the face form, for 'auto' where no compiled face can run
    (no C++ compiler, no triton): the forwards are the reference's, under the autocast that
    gives the requested dtype; the backwards are the closed-form gradients every face shares
    (kernels/rules.py), with the cubes and targets rebuilt by the reference."""

    @staticmethod
    def _cast(out_dtype, device):
        if out_dtype in (torch.bfloat16, torch.float16):
            return torch.autocast(device.type, dtype=out_dtype)
        return _no_autocast(device)

    @classmethod
    def embed_forward(cls, video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype):
        with cls._cast(out_dtype, video.device):
            return reference.visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size)

    @staticmethod
    def embed_backward(grad, video, weight, pos_table, vis_idx, tubelet_size, out_dtype, bias_dtype,
                       needs):
        def cubes():
            rows = reference.patchify(video, weight.shape[-1], tubelet_size)
            return reference.gather_tokens(rows, vis_idx).reshape(-1, rows.shape[-1])
        return embed_grads(grad, weight, pos_table, vis_idx, out_dtype, bias_dtype, needs, cubes)

    @classmethod
    def decoder_forward(cls, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype):
        with cls._cast(out_dtype, z.device):
            return reference.decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)

    decoder_backward = staticmethod(decoder_grads)

    @staticmethod
    def mse_forward(pred, video, dec_idx, *args):
        return reference.mse_per_token(pred, video, dec_idx, *args)

    @staticmethod
    def mse_backward(grad, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
        """d mean((pred - target)^2) / d pred = 2 (pred - target) / D, times each token's grad."""
        target = reference.normalized_targets(video, dec_idx, patch_size, tubelet_size, normalize,
                                              mean, std, eps)
        diff = pred.to(target.dtype) - target
        return (diff * (grad.to(target.dtype) * 2 / diff.shape[-1]).unsqueeze(-1)).to(pred.dtype)
