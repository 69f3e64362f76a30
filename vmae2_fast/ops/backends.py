"""Which implementation (backend) of the fused ops runs, chosen once per process and resolved per
device when an op runs:

- 'auto' (default): Triton for CUDA tensors, C++ for CPU tensors; where that backend cannot run,
  the reference runs and the reason is logged once (never a silent fallback);
- 'triton' / 'cpp': that backend only, an error where it cannot run;
- 'reference': the plain-PyTorch definitions (each op file's `reference`), which autograd and
  torch.compile see through.

The Triton kernels (`vmae2_fast.kernels`, the top-level kernels/ folder) are imported on first
use: triton decides between compiled and interpreted (TRITON_INTERPRET=1) kernels when it
decorates them. The C++ ops are compiled on first use (`ops/cpp.py`).
"""
from __future__ import annotations

import contextlib
import importlib
import logging

import torch

log = logging.getLogger("vmae2_fast.ops")

BACKENDS = ("auto", "triton", "cpp", "reference")
_active = "auto"
_logged: set = set()
_triton_error: str | None = None


def triton_kernels(op: str):
    """`vmae2_fast.kernels.<op>` (the Triton launchers of one op), or None with the reason kept."""
    global _triton_error
    try:
        return importlib.import_module(f"vmae2_fast.kernels.{op}")
    except Exception as exc:   # no triton, or a triton that fails to import
        _triton_error = f"the Triton kernels cannot be loaded ({type(exc).__name__}: {exc})"
        return None


def triton_available() -> bool:
    return all(triton_kernels(op) is not None for op in ("patch_embed", "decoder_assembly", "masked_loss"))


def triton_interpreted() -> bool:
    """True when the Triton kernels run on the CPU interpreter in this process."""
    common = triton_kernels("_common")
    return common is not None and common.interpreter_active()


def _cpp():
    from . import cpp
    return cpp


def _log_once(key, msg, *args, level=logging.INFO):
    if key not in _logged:
        _logged.add(key)
        log.log(level, msg, *args)


def use_backend(name: str) -> None:
    """Select the backend of the fused ops: 'auto', 'triton', 'cpp' or 'reference'."""
    global _active
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "triton" and not triton_available():
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


@contextlib.contextmanager
def backend(name: str):
    """`with ops.backend("cpp"): ...` runs the block on that backend, then restores the previous."""
    before = _active
    use_backend(name)
    try:
        yield
    finally:
        use_backend(before)


def resolve(device: torch.device) -> str:
    """The backend that runs an op on tensors of `device`: 'triton', 'cpp' or 'reference'."""
    if _active == "reference":
        return "reference"
    if _active == "cpp":
        if device.type != "cpu":
            raise RuntimeError(f"--kernels cpp runs on CPU tensors only, got {device}")
        _log_once("cpp", "fused ops: C++ CPU backend, as requested")
        return "cpp"
    if _active == "triton":
        _log_once("triton", "fused ops: Triton backend, as requested")
        return "triton"
    if device.type == "cuda":
        if triton_available():
            _log_once("auto-cuda", "fused ops: Triton kernels for CUDA tensors (auto)")
            return "triton"
        _log_once("auto-cuda-ref", "fused ops: reference for CUDA tensors, because %s", _triton_error,
                  level=logging.WARNING)
        return "reference"
    if device.type == "cpu":
        cpp = _cpp()
        if cpp.available():
            _log_once("auto-cpu", "fused ops: C++ CPU ops for CPU tensors (auto)")
            return "cpp"
        _log_once("auto-cpu-ref", "fused ops: reference for CPU tensors, because %s", cpp.error(),
                  level=logging.WARNING)
        return "reference"
    _log_once(f"auto-{device.type}", "fused ops: reference for %s tensors (no fused backend)", device.type)
    return "reference"
