"""Triton kernels for the fused VideoMAE V2 ops (installed as `vmae2_fast.kernels`).

Depends on torch and triton only, never on the rest of vmae2_fast, so other MAE codebases can
use it on its own. Each op has the signature of the plain-PyTorch reference:

  visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size)
  decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)
  masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size, normalize=True,
             denominator=None, eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD)

They run on CUDA tensors, or on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1`
set before this package is imported). Accumulation is float32 (float64 for float64 inputs);
inputs may be float32, bfloat16 or float16 (and float64).
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
    HAS_TRITON = True
    IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the environment
    HAS_TRITON = False
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

if HAS_TRITON:
    from ._common import interpreter_active
    from .decoder import decoder_input
    from .embed import visible_patch_embed
    from .mse import IMAGENET_MEAN, IMAGENET_STD, masked_mse, masked_mse_per_token

__all__ = ["HAS_TRITON", "IMPORT_ERROR", "visible_patch_embed", "decoder_input", "masked_mse",
           "masked_mse_per_token", "interpreter_active", "IMAGENET_MEAN", "IMAGENET_STD"]
