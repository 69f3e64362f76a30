"""What the Triton kernels of this folder share: device checks, the dtypes tiles are multiplied and
accumulated in, and the on-the-fly cube gather. Depends on torch and triton only."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
       torch.float16: tl.float16}
# tl.dot precisions: "ieee" multiplies float32 tiles in float32 on the FMA units; "tf32" uses the
# tensor cores (10-bit mantissa inputs, float32 accumulation), what cuBLAS does under allow_tf32.
PRECISIONS = ("ieee", "tf32")


def interpreter_active() -> bool:
    """True when the kernels were compiled for the Triton CPU interpreter."""
    return bool(triton.knobs.runtime.interpret)


def check_device(*tensors: torch.Tensor) -> None:
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device, got {t.device} and {dev}")
    if dev.type == "cpu" and not interpreter_active():
        raise RuntimeError("the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before the "
                           "first kernel is imported to run them on the CPU interpreter")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_dtype(out_dtype: torch.dtype) -> torch.dtype:
    """The dtype the GEMMs multiply in: half types as they are, everything else in the
    accumulation dtype (float32, or float64 for float64)."""
    return out_dtype if out_dtype in (torch.bfloat16, torch.float16) else acc_dtype(out_dtype)


def mma_dtype(dtype: torch.dtype):
    """The dtype fed to tl.dot. The interpreter multiplies bfloat16 tiles as their raw uint16 bits
    (triton 3.x), so there the already-rounded tiles are widened to float32 (exact) first."""
    if dtype == torch.bfloat16 and interpreter_active():
        return tl.float32
    return _TL[dtype]


def dot_precision(dot: torch.dtype, precision: str) -> str:
    """tl.dot's input_precision: TF32 only where the tiles are float32 on a GPU (the interpreter
    and float64 multiply exactly whatever is asked)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision if dot == torch.float32 and not interpreter_active() else "ieee"


def tl_dtype(dtype: torch.dtype):
    return _TL[dtype]


@triton.jit
def cube_row_base(tok, b, GH, GW, TUB: tl.constexpr, P: tl.constexpr, s_b, s_t, s_h, s_w):
    """Offset of the first pixel of each token's cube (tok, b: int vectors) in the video."""
    tok = tok.to(tl.int64)
    hw = GH * GW
    tt = tok // hw
    hh = (tok // GW) % GH
    ww = tok % GW
    return b.to(tl.int64) * s_b + tt * (TUB * s_t) + hh * (P * s_h) + ww * (P * s_w)


@triton.jit
def tile(axis, BLOCK: tl.constexpr, limit):
    """This program's indices along one grid axis, and which of them are in range."""
    r = tl.program_id(axis) * BLOCK + tl.arange(0, BLOCK)
    return r, r < limit
