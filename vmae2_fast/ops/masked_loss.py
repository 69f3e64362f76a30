"""The pre-training loss: the official normalised masked MSE, with targets built only for the
decoded tokens.

    masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size, normalize=True,
               denominator=None, eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> scalar

Targets: pixels back to [0, 1] (the clip was normalised with mean/std), each cube normalised per
colour channel over its t*p*p pixels (unbiased variance, eps on the std), laid out (t, row, col,
c). Each decoded token's mean squared error is weighted 1 where the encoder did not see it and 0
where it did, and the sum is divided by the number of weighted tokens (`common.masked_token_mean`).

The fused part is the per-token error, `masked_mse_per_token` (B, N_dec), in at least float32.
Backends (`ops.backend`): `per_token_reference` below (the spec); Triton, `kernels/masked_loss.py`;
C++, `csrc/masked_loss.cpp`. Both rebuild each target from the video in the forward and again in
the backward, so no target tensor is ever stored.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from . import cpp, library
from .backends import active_backend, resolve, triton_kernels
from .common import (acc_dtype, channel_stats, check_video, encoder_masked, gather_tokens,
                     masked_token_mean, num_tokens, patchify, refuse_video_grad)


@torch.no_grad()
def normalized_targets(video, idx, patch_size: int, tubelet_size: int, normalize: bool = True,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, eps: float = 1e-6):
    """Official pre-training targets for the tokens in `idx` only: (B, k, t*p*p*3), in at least
    float32. The official code builds them for all N tokens and then selects; gathering first
    computes the same numbers for the ~half that enter the loss."""
    dtype = torch.promote_types(video.dtype, torch.float32)
    cubes = gather_tokens(patchify(video.to(dtype), patch_size, tubelet_size, channel_last=True), idx)
    B, k, _ = cubes.shape
    cubes = cubes.view(B, k, -1, video.shape[1])                      # (B, k, t*p*p, C)
    m, s = channel_stats(mean, std, dtype, video.device)     # cached: no host copy per call
    cubes = cubes * s + m
    if normalize:
        mu = cubes.mean(dim=-2, keepdim=True)
        sd = cubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        cubes = (cubes - mu) / (sd + eps)
    return cubes.reshape(B, k, -1)


def per_token_reference(pred, video, dec_idx, patch_size: int, tubelet_size: int, normalize: bool = True,
                        eps: float = 1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Each decoded token's mean squared error against its target, (B, N_dec), in at least float32."""
    target = normalized_targets(video, dec_idx, patch_size, tubelet_size, normalize, mean, std, eps)
    return (pred.to(target.dtype) - target).pow(2).mean(dim=-1)


def reference(pred, video, vis_idx, dec_idx, patch_size: int, tubelet_size: int, normalize: bool = True,
              denominator=None, eps: float = 1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The official masked MSE. `denominator` (a tensor) replaces the local count of weighted
    tokens: data-parallel training passes the global count divided by the world size, so that the
    averaged gradient is that of one token-weighted mean over the global batch, whatever the number
    of GPUs. Where no decoded token is encoder-masked the official code divides by zero; the count
    is clamped to 1 so that such a degenerate batch gives 0 instead of NaN."""
    per_token = per_token_reference(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps,
                                    mean, std)
    return masked_token_mean(per_token, vis_idx, dec_idx, num_tokens(video, patch_size, tubelet_size),
                             denominator)


def loss_token_count(vis_idx, dec_idx, n_tokens: int):
    """Number of tokens that enter the masked MSE (decoded and encoder-masked), as a 0-d tensor."""
    return encoder_masked(vis_idx, dec_idx, n_tokens).sum()


def error_dtype(video: Tensor) -> torch.dtype:
    """The per-token errors' dtype (the reference's): float64 for float64 video, else float32."""
    return torch.promote_types(video.dtype, torch.float32)


# ---------------------------------------------------------------------------------- per backend
def _cpp_pred(pred, video):
    """The C++ loops read the prediction in the accumulation dtype, contiguous."""
    return pred.to(acc_dtype(torch.promote_types(video.dtype, pred.dtype))).contiguous()


def _stats(mean, std, video):
    return channel_stats(mean, std, acc_dtype(error_dtype(video)), video.device)


def _forward(backend, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
    if backend == "triton":
        return triton_kernels("masked_loss").forward(pred, video, dec_idx, *_stats(mean, std, video),
                                                    patch_size, tubelet_size, normalize, eps)
    if backend == "cpp":
        return cpp.load().mse_tokens(_cpp_pred(pred, video), video, dec_idx, patch_size, tubelet_size,
                                     mean, std, normalize, eps, None)
    return per_token_reference(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std)


def _backward(backend, grad, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
    """d sum(grad * per-token error) / d pred, in pred's dtype."""
    if backend == "triton":
        return triton_kernels("masked_loss").backward(grad, pred, video, dec_idx, *_stats(mean, std, video),
                                                     patch_size, tubelet_size, normalize, eps)
    if backend == "cpp":
        return cpp.load().mse_tokens(_cpp_pred(pred, video), video, dec_idx, patch_size, tubelet_size,
                                     mean, std, normalize, eps, grad).to(pred.dtype)
    # d mean((pred - target)^2) / d pred = 2 (pred - target) / D, times each token's grad
    target = normalized_targets(video, dec_idx, patch_size, tubelet_size, normalize, mean, std, eps)
    diff = pred.to(target.dtype) - target
    return (diff * (grad.to(target.dtype) * 2 / diff.shape[-1]).unsqueeze(-1)).to(pred.dtype)


# --------------------------------------------------------------------------- the registered op
def _kernel(pred: Tensor, video: Tensor, dec_idx: Tensor, patch_size: int, tubelet_size: int,
            normalize: bool, eps: float, mean: list[float], std: list[float]) -> Tensor:
    with library.no_autocast(video.device):
        out = _forward(resolve(video.device), pred, video, dec_idx, patch_size, tubelet_size, normalize,
                       eps, mean, std)
    return out.to(error_dtype(video))      # the C++ loops keep float64 for float64 predictions


_op = library.register("masked_mse_per_token", _kernel)


@_op.register_fake
def _(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
    return dec_idx.new_empty(dec_idx.shape, dtype=error_dtype(video), device=video.device)


def _backward_kernel(grad: Tensor, pred: Tensor, video: Tensor, dec_idx: Tensor, patch_size: int,
                     tubelet_size: int, normalize: bool, eps: float, mean: list[float],
                     std: list[float]) -> Tensor:
    with library.no_autocast(video.device):
        return _backward(resolve(video.device), grad, pred, video, dec_idx, patch_size, tubelet_size,
                         normalize, eps, mean, std)


_backward_op = library.register("masked_mse_per_token_backward", _backward_kernel)


@_backward_op.register_fake
def _(grad, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
    return pred.new_empty(pred.shape)


def _setup(ctx, inputs, output):
    pred, video, dec_idx, *args = inputs
    ctx.save_for_backward(pred, video, dec_idx)
    ctx.args = args


def _grad(ctx, grad):
    if not ctx.needs_input_grad[0]:
        return (None,) * 9
    return (_backward_op(grad, *ctx.saved_tensors, *ctx.args),) + (None,) * 8


_op.register_autograd(_grad, setup_context=_setup)


def masked_mse_per_token(pred, video, dec_idx, patch_size: int, tubelet_size: int, normalize=True,
                         eps: float = 1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Each decoded token's mean squared error against its normalised target, (B, N_dec)."""
    if active_backend() == "reference":
        return per_token_reference(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std)
    check_video(video, patch_size, tubelet_size)
    refuse_video_grad(video)
    d = video.shape[1] * tubelet_size * patch_size ** 2
    if pred.shape != (*dec_idx.shape, d):
        raise ValueError(f"pred must be {(*dec_idx.shape, d)}, got {tuple(pred.shape)}")
    return _op(pred, video, dec_idx, patch_size, tubelet_size, bool(normalize), float(eps),
               [float(x) for x in mean], [float(x) for x in std])


def masked_mse(pred, video, vis_idx, dec_idx, patch_size: int, tubelet_size: int, normalize=True,
               denominator=None, eps: float = 1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The official masked MSE (see `reference`) on the selected backend."""
    if active_backend() == "reference":
        return reference(pred, video, vis_idx, dec_idx, patch_size, tubelet_size, normalize, denominator,
                         eps, mean, std)
    per_token = masked_mse_per_token(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps,
                                     mean, std)
    return masked_token_mean(per_token, vis_idx, dec_idx, num_tokens(video, patch_size, tubelet_size),
                             denominator)
