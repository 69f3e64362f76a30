"""Helpers shared by the Triton ops: device checks, dtype rules and the on-the-fly cube gather."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
       torch.float16: tl.float16}


def interpreter_active() -> bool:
    """True when the kernels were compiled for the Triton CPU interpreter."""
    return bool(triton.knobs.runtime.interpret)


def check_device(*tensors: torch.Tensor) -> None:
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device, got {t.device} and {dev}")
    if dev.type == "cpu" and not interpreter_active():
        raise RuntimeError("the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "importing vmae2_fast.kernels to run them on the CPU interpreter")


def compute_dtype(device: torch.device, *dtypes: torch.dtype) -> torch.dtype:
    """The dtype the reference would produce: the autocast dtype inside autocast, else promotion."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def mma_dtype(dtype: torch.dtype):
    """The dtype fed to tl.dot. The interpreter multiplies bfloat16 tiles as their raw uint16 bits
    (triton 3.x), so there the already-rounded tiles are widened to float32 (exact) first."""
    if dtype == torch.bfloat16 and interpreter_active():
        return tl.float32
    return _TL[dtype]


def tl_dtype(dtype: torch.dtype):
    return _TL[dtype]


def table_grad(grad_rows: torch.Tensor, idx: torch.Tensor, pos_table: torch.Tensor) -> torch.Tensor:
    """Gradient of a (1, N, C) table gathered at idx (B, k), from grad rows (B, k, C)."""
    g = torch.zeros(pos_table.shape[1:], dtype=acc_dtype(grad_rows.dtype), device=grad_rows.device)
    g.index_add_(0, idx.reshape(-1), grad_rows.reshape(-1, g.shape[1]).to(g.dtype))
    return g.unsqueeze(0).to(pos_table.dtype)


def num_tokens(video: torch.Tensor, patch_size: int, tubelet_size: int) -> int:
    _, _, t, h, w = video.shape
    return (t // tubelet_size) * (h // patch_size) * (w // patch_size)


def check_video(video: torch.Tensor, patch_size: int, tubelet_size: int) -> None:
    if video.ndim != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got {tuple(video.shape)}")
    _, _, t, h, w = video.shape
    if t % tubelet_size or h % patch_size or w % patch_size:
        raise ValueError(f"video {tuple(video.shape)} is not divisible into {tubelet_size}x"
                         f"{patch_size}x{patch_size} cubes")
    if video.requires_grad:
        raise NotImplementedError("the fused ops give no gradient to the video; detach it or use "
                                  "the reference backend")


@triton.jit
def cube_row_base(tok, b, GH, GW, TUB: tl.constexpr, P: tl.constexpr, s_b, s_t, s_h, s_w):
    """Offset of the first pixel of each token's cube (tok, b: int vectors) in the video."""
    tok = tok.to(tl.int64)
    hw = GH * GW
    tt = tok // hw
    hh = (tok // GW) % GH
    ww = tok % GW
    return b.to(tl.int64) * s_b + tt * (TUB * s_t) + hh * (P * s_h) + ww * (P * s_w)
