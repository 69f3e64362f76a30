"""Decoder assembly `[z @ W^T + pos[vis], mask_token + pos[dec]]` in one Triton launch: the first
programs run the encoder-to-decoder GEMM with the position gather as its epilogue, the rest fill the
mask-token rows. The backward is three plain GEMM-shaped reductions, written once for every backend
in `vmae2_fast/ops/decoder_assembly.py`, which also holds the op's checks and autograd."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, check_device, dot_dtype, dot_precision, mma_dtype, tl_dtype

BM, BN, BK = 64, 64, 32


@triton.jit
def _decoder_fwd(z, w, pos, vis, dec, tokw, out, MV, MD, NV, ND, CE, CD, n_vis_blocks,
                 s_vb, s_vj, s_db, s_dj,
                 DOT: tl.constexpr, MMA: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = rn < CD
    if pid_m < n_vis_blocks:
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mm = rm < MV
        b = rm // NV
        j = rm % NV
        tok = tl.load(vis + b.to(tl.int64) * s_vb + j * s_vj, mask=mm, other=0)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for k0 in range(0, CE, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mk = rk < CE
            a = tl.load(z + rm.to(tl.int64)[:, None] * CE + rk[None, :], mask=mm[:, None] & mk[None, :],
                        other=0.0)
            wt = tl.load(w + rn.to(tl.int64)[None, :] * CE + rk[:, None], mask=mk[:, None] & mn[None, :],
                         other=0.0)
            acc += tl.dot(a.to(DOT).to(MMA), wt.to(DOT).to(MMA), input_precision=PREC, out_dtype=ACC)
        row = b.to(tl.int64) * (NV + ND) + j
    else:
        rm = (pid_m - n_vis_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        mm = rm < MD
        b = rm // ND
        j = rm % ND
        tok = tl.load(dec + b.to(tl.int64) * s_db + j * s_dj, mask=mm, other=0)
        t = tl.load(tokw + rn, mask=mn, other=0.0).to(ACC)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC) + t[None, :]
        row = b.to(tl.int64) * (NV + ND) + NV + j
    msk = mm[:, None] & mn[None, :]
    acc += tl.load(pos + tok.to(tl.int64)[:, None] * CD + rn[None, :], mask=msk, other=0.0).to(ACC)
    tl.store(out + row[:, None] * CD + rn[None, :], acc.to(out.dtype.element_ty), mask=msk)


def forward(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype, precision="ieee"):
    """The decoder sequence (B, N_vis + N_dec, C_d) in `out_dtype`."""
    check_device(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)
    vis_idx, dec_idx = vis_idx.long(), dec_idx.long()  # one index type for both branches
    dot, acc = dot_dtype(out_dtype), acc_dtype(out_dtype)
    bsz, nv, ce = z.shape
    nd = dec_idx.shape[1]
    cd = proj_weight.shape[0]
    z2 = z.reshape(bsz * nv, ce).contiguous()
    w = proj_weight.contiguous()
    pos = pos_table.reshape(-1, cd).contiguous()
    out = torch.empty(bsz, nv + nd, cd, dtype=out_dtype, device=z.device)
    nvb = triton.cdiv(bsz * nv, BM)
    grid = (nvb + triton.cdiv(bsz * nd, BM), triton.cdiv(cd, BN))
    _decoder_fwd[grid](z2, w, pos, vis_idx, dec_idx, mask_token.reshape(-1), out, bsz * nv,
                       bsz * nd, nv, nd, ce, cd, nvb, vis_idx.stride(0), vis_idx.stride(1),
                       dec_idx.stride(0), dec_idx.stride(1), DOT=tl_dtype(dot), MMA=mma_dtype(dot),
                       ACC=tl_dtype(acc), PREC=dot_precision(dot, precision), BLOCK_M=BM, BLOCK_N=BN,
                       BLOCK_K=BK)
    return out
