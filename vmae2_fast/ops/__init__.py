"""Front door of the fused ops: the model and the loss call these, never a backend directly.

Three faces with one signature each: `reference` (plain PyTorch, the spec: `ops/reference.py`),
`triton` (`vmae2_fast.kernels`, for CUDA tensors, or CPU tensors under `TRITON_INTERPRET=1`) and
`cpp` (`csrc/` through `ops/cpp.py`, OpenMP, CPU tensors; compiled on first use). The rules the
faces share (output dtypes, table gradients, loss weighting) are in `vmae2_fast.kernels.rules`.
`use_backend` picks one:

- 'auto' (default): per call, Triton for CUDA tensors and C++ for CPU tensors; where that face is
  unavailable the reference runs and the reason is logged once (never a silent fallback);
- 'triton' / 'cpp': that face only; an error where it cannot run;
- 'reference': the plain-PyTorch definitions.

Except under 'reference', each op is a torch.library custom op (`ops/custom.py`): torch.compile
keeps it whole, and its kernel asks `_impl` for the face when it runs, so the face is chosen and
logged at run time, never while torch.compile traces. Under 'reference' the ops are plain
PyTorch, which autograd and torch.compile see through.
"""
from __future__ import annotations

import logging

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from . import custom, reference

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "cpp", "reference")
_active = "auto"
_logged: set = set()
_triton_error: str | None = None


def _triton():
    """The Triton face (imported on first use), or None with the reason kept."""
    global _triton_error
    try:
        from .. import kernels
        return kernels.load()
    except Exception as exc:
        _triton_error = f"vmae2_fast.kernels cannot be used ({type(exc).__name__}: {exc})"
        return None


def _cpp():
    from . import cpp
    return cpp


def _log_once(key, msg, *args, level=logging.INFO):
    if key not in _logged:
        _logged.add(key)
        log.log(level, msg, *args)


def use_backend(name: str) -> None:
    """Select the implementation of the fused ops: 'auto', 'triton', 'cpp' or 'reference'."""
    global _active
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "triton" and _triton() is None:
        raise RuntimeError(f"--kernels triton: {_triton_error}")
    if name == "cpp":
        _cpp().load()  # raises with the reason (no compiler, build error) where it cannot build
    if name != _active:
        _logged.clear()
    _active = name
    if name == "reference":
        _log_once("reference", "fused ops: reference backend (plain PyTorch), as requested")


def active_backend() -> str:
    return _active


def _impl(device):
    """The module that runs an op on tensors of `device`, per the selected backend."""
    if _active == "reference":
        return reference
    if _active == "cpp":
        if device.type != "cpu":
            raise RuntimeError(f"--kernels cpp runs on CPU tensors only, got {device}")
        _log_once("cpp", "fused ops: C++ CPU backend, as requested")
        return _cpp()
    if _active == "triton":
        _log_once("triton", "fused ops: Triton backend, as requested")
        return _triton()
    # auto
    if device.type == "cuda":
        k = _triton()
        if k is not None:
            _log_once("auto-cuda", "fused ops: Triton kernels for CUDA tensors (auto)")
            return k
        _log_once("auto-cuda-ref", "fused ops: reference for CUDA tensors, because %s", _triton_error,
                  level=logging.WARNING)
        return reference
    if device.type == "cpu":
        cpp = _cpp()
        if cpp.available():
            _log_once("auto-cpu", "fused ops: C++ CPU ops for CPU tensors (auto)")
            return cpp
        _log_once("auto-cpu-ref", "fused ops: reference for CPU tensors, because %s", cpp._error,
                  level=logging.WARNING)
        return reference
    _log_once(f"auto-{device.type}", "fused ops: reference for %s tensors (no fused face)", device.type)
    return reference


def _front():
    """The module whose functions the model calls: plain PyTorch under 'reference', else the
    custom ops (whose kernels dispatch per device when they run)."""
    return reference if _active == "reference" else custom


def visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size):
    return _front().visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size)


def decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    return _front().decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)


def masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size, normalize=True,
               denominator=None, eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return _front().masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size,
                               normalize=normalize, denominator=denominator, eps=eps, mean=mean, std=std)


# Not fused ops, shared by every backend.
normalized_targets = reference.normalized_targets
loss_token_count = reference.loss_token_count
