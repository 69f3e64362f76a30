"""Normalised masked MSE: each program gathers one decoded token's cube from the video, undoes the
ImageNet normalisation, normalises it per colour channel (unbiased variance, eps on the std) and
returns the token's mean squared error against the prediction. The backward recomputes the target
the same way, so targets are never stored."""
from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from . import autograd
from ._common import acc_dtype, check_device, check_video, cube_row_base, tl_dtype
from .rules import IMAGENET_MEAN, IMAGENET_STD, channel_stats


@triton.jit
def _token_target(video, dec, mean, std, r, ND, C, GH, GW, s_b, s_c, s_t, s_h, s_w, s_db, s_dj, eps,
                  TUB: tl.constexpr, P: tl.constexpr, NORMALIZE: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Target of decoded token r as a (BLOCK_P, BLOCK_C) tile in (pixel, channel) order."""
    b = r // ND
    tok = tl.load(dec + b.to(tl.int64) * s_db + (r % ND) * s_dj)
    base = cube_row_base(tok, b, GH, GW, TUB, P, s_b, s_t, s_h, s_w)
    pi = tl.arange(0, BLOCK_P)
    ci = tl.arange(0, BLOCK_C)
    mp = pi < TUB * P * P
    mc = ci < C
    msk = mp[:, None] & mc[None, :]
    poff = (pi // (P * P)).to(tl.int64) * s_t + ((pi // P) % P) * s_h + (pi % P) * s_w
    x = tl.load(video + base + poff[:, None] + ci.to(tl.int64)[None, :] * s_c, mask=msk, other=0.0)
    m = tl.load(mean + ci, mask=mc, other=0.0).to(ACC)
    s = tl.load(std + ci, mask=mc, other=1.0).to(ACC)
    x = x.to(ACC) * s[None, :] + m[None, :]
    if NORMALIZE:
        n = TUB * P * P
        mu = tl.sum(tl.where(msk, x, 0.0), axis=0) / n
        d = tl.where(msk, x - mu[None, :], 0.0)
        sd = tl.sqrt(tl.sum(d * d, axis=0) / (n - 1))
        x = d / (sd[None, :] + eps)
    return x, msk, pi, ci


@triton.jit
def _mse_fwd(pred, video, dec, mean, std, out, ND, C, D, GH, GW, s_b, s_c, s_t, s_h, s_w, s_db, s_dj,
             eps, TUB: tl.constexpr, P: tl.constexpr, NORMALIZE: tl.constexpr, ACC: tl.constexpr,
             BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0)
    tgt, msk, pi, ci = _token_target(video, dec, mean, std, r, ND, C, GH, GW, s_b, s_c, s_t, s_h, s_w,
                                     s_db, s_dj, eps, TUB, P, NORMALIZE, ACC, BLOCK_P, BLOCK_C)
    pr = tl.load(pred + r.to(tl.int64) * D + pi[:, None] * C + ci[None, :], mask=msk, other=0.0)
    e = tl.where(msk, pr.to(ACC) - tgt, 0.0)
    tl.store(out + r, tl.sum(tl.sum(e * e, axis=1), axis=0) / D)


@triton.jit
def _mse_bwd(pred, video, dec, mean, std, gtok, gpred, ND, C, D, GH, GW, s_b, s_c, s_t, s_h, s_w,
             s_db, s_dj, eps, TUB: tl.constexpr, P: tl.constexpr, NORMALIZE: tl.constexpr,
             ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0)
    tgt, msk, pi, ci = _token_target(video, dec, mean, std, r, ND, C, GH, GW, s_b, s_c, s_t, s_h, s_w,
                                     s_db, s_dj, eps, TUB, P, NORMALIZE, ACC, BLOCK_P, BLOCK_C)
    off = r.to(tl.int64) * D + pi[:, None] * C + ci[None, :]
    pr = tl.load(pred + off, mask=msk, other=0.0).to(ACC)
    g = tl.load(gtok + r).to(ACC) * 2.0 / D
    tl.store(gpred + off, ((pr - tgt) * g).to(gpred.dtype.element_ty), mask=msk)


def _args(video, dec_idx, patch_size, tubelet_size, normalize, eps):
    bsz, c, _, h, w = video.shape
    acc = acc_dtype(torch.promote_types(video.dtype, torch.float32))
    return dict(ND=dec_idx.shape[1], C=c, D=c * tubelet_size * patch_size ** 2, GH=h // patch_size,
                GW=w // patch_size, s_b=video.stride(0), s_c=video.stride(1), s_t=video.stride(2),
                s_h=video.stride(3), s_w=video.stride(4), s_db=dec_idx.stride(0),
                s_dj=dec_idx.stride(1), eps=float(eps), TUB=tubelet_size, P=patch_size,
                NORMALIZE=bool(normalize), ACC=tl_dtype(acc),
                BLOCK_P=triton.next_power_of_2(tubelet_size * patch_size ** 2),
                BLOCK_C=triton.next_power_of_2(c)), acc


def _checked_args(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps):
    check_device(pred, video, dec_idx)
    check_video(video, patch_size, tubelet_size)
    kw, acc = _args(video, dec_idx, patch_size, tubelet_size, normalize, eps)
    if pred.shape != (*dec_idx.shape, kw["D"]):
        raise ValueError(f"pred must be {(*dec_idx.shape, kw['D'])}, got {tuple(pred.shape)}")
    return kw, acc


def mse_forward(pred, video, dec_idx, patch_size, tubelet_size, normalize=True, eps=1e-6,
                mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Each decoded token's mean squared error against its normalised target, (B, N_dec), in the
    accumulation dtype."""
    kw, acc = _checked_args(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps)
    m, s = channel_stats(mean, std, acc, video.device)
    out = torch.empty(dec_idx.shape, dtype=acc, device=video.device)
    _mse_fwd[(dec_idx.numel(),)](pred.contiguous(), video, dec_idx, m, s, out, **kw)
    return out


def mse_backward(grad_tok, pred, video, dec_idx, patch_size, tubelet_size, normalize=True,
                 eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The gradient of the per-token errors with respect to `pred` (its dtype); the targets are
    recomputed, never stored."""
    kw, acc = _checked_args(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps)
    m, s = channel_stats(mean, std, acc, video.device)
    pred = pred.contiguous()
    gpred = torch.empty_like(pred)
    _mse_bwd[(dec_idx.numel(),)](pred, video, dec_idx, m, s, grad_tok.contiguous(), gpred, **kw)
    return gpred


def masked_mse_per_token(pred, video, dec_idx, patch_size, tubelet_size, normalize=True, eps=1e-6,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Each decoded token's mean squared error against its normalised target, (B, N_dec)."""
    return autograd.masked_mse_per_token(sys.modules[__name__], pred, video, dec_idx, patch_size,
                                         tubelet_size, normalize, eps, mean, std)


def masked_mse(pred, video, vis_idx, dec_idx, patch_size: int, tubelet_size: int, normalize=True,
               denominator=None, eps: float = 1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The official masked MSE (see the reference): token errors weighted by the encoder-masked
    flag, divided by their count (or `denominator`), clamped to at least 1."""
    return autograd.masked_mse(sys.modules[__name__], pred, video, vis_idx, dec_idx, patch_size,
                               tubelet_size, normalize, denominator, eps, mean, std)
