"""Visible patch embedding in Triton: gather the visible cubes straight from the video (im2col on
the fly), multiply by the Conv3d weight, add bias and the position table, in one kernel.

The weight gradient re-gathers the cubes from the video, so neither the full token grid nor the
gathered cubes are kept between forward and backward. The op around these launchers (shape checks,
dtype rules, the bias and table gradients, autograd) is `vmae2_fast/ops/patch_embed.py`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (acc_dtype, check_device, cube_row_base, dot_dtype, dot_precision, mma_dtype,
                      tile, tl_dtype)

BM, BN, BK = 64, 64, 32


@triton.jit
def _k_offsets(rk, K, s_c, s_t, s_h, s_w, TUB: tl.constexpr, P: tl.constexpr):
    """Video offset of reduction index k = (c, dt, row, col), the Conv3d weight order."""
    rk64 = rk.to(tl.int64)
    c = rk64 // (TUB * P * P)
    rem = rk64 % (TUB * P * P)
    return c * s_c + (rem // (P * P)) * s_t + ((rem // P) % P) * s_h + (rem % P) * s_w


@triton.jit
def _embed_fwd(video, w, bias, pos, idx, out, M, NV, CE, K, GH, GW,
               s_b, s_c, s_t, s_h, s_w, s_ib, s_ij,
               TUB: tl.constexpr, P: tl.constexpr, HAS_BIAS: tl.constexpr,
               DOT: tl.constexpr, MMA: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm, mm = tile(0, BLOCK_M, M)
    rn, mn = tile(1, BLOCK_N, CE)
    b = rm // NV
    tok = tl.load(idx + b.to(tl.int64) * s_ib + (rm % NV) * s_ij, mask=mm, other=0)
    base = cube_row_base(tok, b, GH, GW, TUB, P, s_b, s_t, s_h, s_w)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < K
        koff = _k_offsets(rk, K, s_c, s_t, s_h, s_w, TUB, P)
        a = tl.load(video + base[:, None] + koff[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
        wt = tl.load(w + rn[None, :].to(tl.int64) * K + rk[:, None], mask=mk[:, None] & mn[None, :],
                     other=0.0)
        acc += tl.dot(a.to(DOT).to(MMA), wt.to(DOT).to(MMA), input_precision=PREC, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(bias + rn, mask=mn, other=0.0).to(ACC)[None, :]
    p = tl.load(pos + tok.to(tl.int64)[:, None] * CE + rn[None, :], mask=mm[:, None] & mn[None, :],
                other=0.0)
    acc += p.to(ACC)
    o = out + rm.to(tl.int64)[:, None] * CE + rn[None, :]
    tl.store(o, acc.to(out.dtype.element_ty), mask=mm[:, None] & mn[None, :])


@triton.jit
def _embed_bwd_w(video, g, idx, gw, M, NV, CE, K, GH, GW,
                 s_b, s_c, s_t, s_h, s_w, s_ib, s_ij,
                 TUB: tl.constexpr, P: tl.constexpr, DOT: tl.constexpr, MMA: tl.constexpr, ACC: tl.constexpr,
                 PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """grad_w[n, k] = sum_m g[m, n] * cube[m, k], the cubes re-gathered from the video."""
    rn, mn = tile(0, BLOCK_N, CE)
    rk, mk = tile(1, BLOCK_K, K)
    koff = _k_offsets(rk, K, s_c, s_t, s_h, s_w, TUB, P)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        mm = rm < M
        b = rm // NV
        tok = tl.load(idx + b.to(tl.int64) * s_ib + (rm % NV) * s_ij, mask=mm, other=0)
        base = cube_row_base(tok, b, GH, GW, TUB, P, s_b, s_t, s_h, s_w)
        a = tl.load(video + base[:, None] + koff[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
        gt = tl.load(g + rn[:, None] + rm.to(tl.int64)[None, :] * CE, mask=mn[:, None] & mm[None, :],
                     other=0.0)
        acc += tl.dot(gt.to(DOT).to(MMA), a.to(DOT).to(MMA), input_precision=PREC, out_dtype=ACC)
    tl.store(gw + rn.to(tl.int64)[:, None] * K + rk[None, :], acc, mask=mn[:, None] & mk[None, :])


def _launch_args(video, vis_idx, weight):
    ce, _, tub, p, _ = weight.shape
    b, _, _, h, w = video.shape
    return dict(GH=h // p, GW=w // p, s_b=video.stride(0), s_c=video.stride(1),
                s_t=video.stride(2), s_h=video.stride(3), s_w=video.stride(4),
                s_ib=vis_idx.stride(0), s_ij=vis_idx.stride(1), TUB=tub, P=p)


def forward(video, weight, bias, pos_table, vis_idx, out_dtype, precision="ieee"):
    """Tokens (B, N_vis, C_e) in `out_dtype`: conv3d(video) + bias + pos, gathered at vis_idx.
    weight: the Conv3d weight (C_e, C, t, p, p); pos_table (1, N, C_e); vis_idx (B, N_vis)."""
    check_device(video, weight, pos_table, vis_idx)
    dot, acc = dot_dtype(out_dtype), acc_dtype(out_dtype)
    ce = weight.shape[0]
    k = weight[0].numel()
    bsz, nv = vis_idx.shape
    m = bsz * nv
    w2 = weight.reshape(ce, k).contiguous()
    pos = pos_table.reshape(-1, ce).contiguous()
    out = torch.empty(m, ce, dtype=out_dtype, device=video.device)
    grid = (triton.cdiv(m, BM), triton.cdiv(ce, BN))
    _embed_fwd[grid](video, w2, bias if bias is not None else w2, pos, vis_idx, out, m, nv, ce, k,
                     HAS_BIAS=bias is not None, DOT=tl_dtype(dot), MMA=mma_dtype(dot), ACC=tl_dtype(acc),
                     PREC=dot_precision(dot, precision), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                     **_launch_args(video, vis_idx, weight))
    return out.view(bsz, nv, ce)


def weight_grad(grad_out, video, weight, vis_idx, out_dtype, precision="ieee"):
    """d loss / d weight (the Conv3d weight's shape and dtype) from grad_out (B, N_vis, C_e): the
    cubes are re-gathered from the video instead of being kept from the forward pass."""
    check_device(grad_out, video, weight, vis_idx)
    ce = weight.shape[0]
    k = weight[0].numel()
    bsz, nv = vis_idx.shape
    g = grad_out.reshape(bsz * nv, ce).contiguous()
    dot = dot_dtype(out_dtype)
    acc = acc_dtype(dot)
    gw = torch.empty(ce, k, dtype=acc, device=video.device)
    grid = (triton.cdiv(ce, BN), triton.cdiv(k, BK))
    _embed_bwd_w[grid](video, g, vis_idx, gw, bsz * nv, nv, ce, k, DOT=tl_dtype(dot), MMA=mma_dtype(dot),
                       ACC=tl_dtype(acc), PREC=dot_precision(dot, precision), BLOCK_M=BM, BLOCK_N=BN,
                       BLOCK_K=BK, **_launch_args(video, vis_idx, weight))
    return gw.view_as(weight).to(weight.dtype)
