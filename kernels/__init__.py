"""Triton kernels for the fused VideoMAE V2 ops (installed as `vmae2_fast.kernels`).

Depends on torch and triton only, never on the rest of vmae2_fast, so other MAE codebases can
use it on its own. Each op has the signature of the plain-PyTorch reference:

  visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size)
  decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)
  masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size, normalize=True,
             denominator=None, eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD)

Each op is also available as two plain functions with explicit dtypes and no autograd
(`embed_forward` / `embed_backward`, `decoder_*`, `mse_*`; see `autograd.py`), the form a
torch.library custom op wraps so that torch.compile keeps the op whole.

They run on CUDA tensors, or on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1`
set before the first op is used). Accumulation is float32 (float64 for float64 inputs); inputs
may be float32, bfloat16 or float16 (and float64).

The ops are imported on first use (`kernels.masked_mse`, ...), not when the package is: triton
decides between compiled and interpreted kernels when it decorates them, and `rules` (the dtype
and backward rules the C++ face shares) must be importable without deciding that.
"""
from __future__ import annotations

import importlib

from .rules import IMAGENET_MEAN, IMAGENET_STD

_LAZY = {"visible_patch_embed": ".embed", "decoder_input": ".decoder", "masked_mse": ".mse",
         "masked_mse_per_token": ".mse", "interpreter_active": "._common",
         # the face functions without autograd (see autograd.py), for torch.library registration
         "embed_forward": ".embed", "embed_backward": ".embed", "decoder_forward": ".decoder",
         "decoder_backward": ".decoder", "mse_forward": ".mse", "mse_backward": ".mse"}
_import_error: str | None = None


def load():
    """Import the Triton ops now; returns this package, or raises ImportError with the reason."""
    global _import_error
    if _import_error is None:
        try:
            for module in set(_LAZY.values()):
                importlib.import_module(module, __name__)
        except Exception as exc:  # no triton, or a triton that fails to import
            _import_error = f"{type(exc).__name__}: {exc}"
    if _import_error:
        raise ImportError(f"the Triton kernels cannot be loaded ({_import_error})")
    return importlib.import_module(__name__)


def __getattr__(name):
    if name in _LAZY:
        load()
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load", "visible_patch_embed", "decoder_input", "masked_mse", "masked_mse_per_token",
           "interpreter_active", "IMAGENET_MEAN", "IMAGENET_STD", "embed_forward", "embed_backward",
           "decoder_forward", "decoder_backward", "mse_forward", "mse_backward"]
