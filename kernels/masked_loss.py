"""Normalised masked MSE per token in Triton: each program gathers one decoded token's cube from the
video, undoes the input normalisation, normalises it per colour channel (unbiased variance, eps on
the std) and returns the token's mean squared error against the prediction. The backward recomputes
the target the same way, so targets are never stored. The token weighting and the autograd are in
`vmae2_fast/ops/masked_loss.py`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, check_device, cube_row_base, tl_dtype


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


def forward(pred, video, dec_idx, mean, std, patch_size, tubelet_size, normalize=True, eps=1e-6):
    """Each decoded token's mean squared error against its normalised target, (B, N_dec), in the
    accumulation dtype. mean, std: per-channel tensors (accumulation dtype, on the video's device)
    that the video was normalised with."""
    check_device(pred, video, dec_idx, mean, std)
    kw, acc = _args(video, dec_idx, patch_size, tubelet_size, normalize, eps)
    out = torch.empty(dec_idx.shape, dtype=acc, device=video.device)
    _mse_fwd[(dec_idx.numel(),)](pred.contiguous(), video, dec_idx, mean, std, out, **kw)
    return out


def backward(grad_tok, pred, video, dec_idx, mean, std, patch_size, tubelet_size, normalize=True,
             eps=1e-6):
    """The gradient of sum(grad_tok * per-token error) with respect to `pred` (its dtype); the
    targets are recomputed, never stored."""
    check_device(grad_tok, pred, video, dec_idx, mean, std)
    kw, acc = _args(video, dec_idx, patch_size, tubelet_size, normalize, eps)
    pred = pred.contiguous()
    gpred = torch.empty_like(pred)
    _mse_bwd[(dec_idx.numel(),)](pred, video, dec_idx, mean, std, grad_tok.contiguous(), gpred, **kw)
    return gpred
