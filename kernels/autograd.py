"""Autograd for the fused ops, written once for every face.

A face (this package's Triton ops, the C++ CPU ops of vmae2_fast) is a module with six plain
functions, no autograd of their own, whose dtypes are explicit arguments rather than read from
the autocast state:

  embed_forward(video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype) -> (B, N_vis, C_e)
  embed_backward(grad, video, weight, pos_table, vis_idx, tubelet_size, out_dtype, bias_dtype,
                 needs) -> (grad_weight, grad_bias, grad_pos)
  decoder_forward(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype)
                 -> (B, N_vis + N_dec, C_d)
  decoder_backward(grad, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype,
                   needs) -> (grad_z, grad_weight, grad_pos, grad_token)
  mse_forward(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std) -> (B, N_dec)
  mse_backward(grad_tok, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std)
              -> grad_pred

`needs` says which gradients to compute (one bool each, in the order returned); the others come
back as None. Keeping the computation free of autograd is what lets vmae2_fast register the same
functions as torch.library custom ops (`vmae2_fast.ops.custom`), which torch.compile keeps whole;
the autograd Functions below serve code that calls a face directly.
"""
from __future__ import annotations

import torch

from .rules import IMAGENET_MEAN, IMAGENET_STD, compute_dtype, masked_token_mean, num_tokens


class _Embed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, face, video, weight, bias, pos_table, vis_idx, tubelet_size):
        out_dtype = compute_dtype(video.device, video.dtype, weight.dtype)
        out = face.embed_forward(video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype)
        ctx.save_for_backward(video, weight, pos_table, vis_idx)
        ctx.face, ctx.tub, ctx.dtype = face, tubelet_size, out_dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        n = ctx.needs_input_grad
        needs = (n[2], n[3] and ctx.bias_dtype is not None, n[4])
        gw, gb, gp = ctx.face.embed_backward(grad, *ctx.saved_tensors, ctx.tub, ctx.dtype,
                                             ctx.bias_dtype, needs)
        return None, None, gw, gb, gp, None, None


class _Decoder(torch.autograd.Function):
    @staticmethod
    def forward(ctx, face, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
        out_dtype = compute_dtype(z.device, z.dtype, proj_weight.dtype)
        out = face.decoder_forward(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype)
        ctx.save_for_backward(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)
        ctx.face, ctx.dtype = face, out_dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        n = ctx.needs_input_grad
        grads = ctx.face.decoder_backward(grad, *ctx.saved_tensors, ctx.dtype, (n[1], n[2], n[3], n[6]))
        gz, gw, gp, gt = grads
        return None, gz, gw, gp, None, None, gt


class _MSETokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, face, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
        args = (patch_size, tubelet_size, normalize, eps, mean, std)
        ctx.save_for_backward(pred, video, dec_idx)
        ctx.face, ctx.args = face, args
        return face.mse_forward(pred, video, dec_idx, *args)

    @staticmethod
    def backward(ctx, grad_tok):
        gp = ctx.face.mse_backward(grad_tok, *ctx.saved_tensors, *ctx.args)
        return (None, gp) + (None,) * 8


def visible_patch_embed(face, video, weight, bias, pos_table, vis_idx, tubelet_size: int):
    """Tokens (B, N_vis, C_e) of the visible cubes: conv3d(video) + pos, gathered at vis_idx."""
    return _Embed.apply(face, video, weight, bias, pos_table, vis_idx, tubelet_size)


def decoder_input(face, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    """The decoder sequence (B, N_vis + N_dec, C_d): visible tokens first, mask tokens last."""
    return _Decoder.apply(face, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)


def masked_mse_per_token(face, pred, video, dec_idx, patch_size, tubelet_size, normalize=True,
                         eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Each decoded token's mean squared error against its normalised target, (B, N_dec)."""
    return _MSETokens.apply(face, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps,
                            mean, std)


def masked_mse(face, pred, video, vis_idx, dec_idx, patch_size: int, tubelet_size: int,
               normalize=True, denominator=None, eps: float = 1e-6, mean=IMAGENET_MEAN,
               std=IMAGENET_STD):
    """The official masked MSE (see vmae2_fast's reference): token errors weighted by the
    encoder-masked flag, divided by their count (or `denominator`), clamped to at least 1."""
    per_token = masked_mse_per_token(face, pred, video, dec_idx, patch_size, tubelet_size,
                                     normalize, eps, mean, std)
    return masked_token_mean(per_token, vis_idx, dec_idx, num_tokens(video, patch_size, tubelet_size),
                             denominator)
