"""Which attention backends can run here, and what `--attention auto` picks.

A backend can run when its library is installed and a tiny forward and backward pass of it
succeeds on the device, in the dtype, at the head dim (and with dropout, if the model uses it):
the kernels' own checks (GPU generation, dtype, head-dim limits, build options) then decide, so
no table of their limits is kept here to go stale. The probe's answer is cached per
(backend, device, dtype, head dim, dropout).

Head dims of the zoo: 64 (S, B, L and every decoder), 80 (ViT-H), 88 (ViT-g), 32 and 16
(vit_micro). What the kernels say about them, as documented upstream (the probe is what counts):
torch's flash kernel takes multiples of 8 up to 256 in fp16/bf16 on sm80+; its memory-efficient
kernel any dtype including fp32; cuDNN fp16/bf16 on sm80+ (head dim <= 128 on most versions);
FlashAttention-2 fp16/bf16 on sm80+ up to 256; FlashAttention-3 fp16/bf16 on Hopper (sm90) only,
head dims up to 256 (80 and 88 run its 96-wide kernel), no attention dropout; xformers' cutlass
kernel any float dtype.
"""
from __future__ import annotations

import functools
import importlib
import warnings

import torch
import torch.nn.functional as F

from ..errors import ConfigError

BACKENDS = ("auto", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "math",
            "flash-attn2", "flash-attn3", "xformers")
SDPA_KERNELS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-math": "MATH"}
EXTERNAL = ("flash-attn2", "flash-attn3", "xformers")
INSTALL = {
    "flash-attn2": "pip install 'vmae2_fast[flash]' (flash-attn builds against the installed torch; "
                   "add --no-build-isolation)",
    "flash-attn3": "build FlashAttention-3 from the hopper/ folder of Dao-AILab/flash-attention "
                   "(it provides the flash_attn_interface module)",
    "xformers": "pip install 'vmae2_fast[xformers]' (pick the xformers build made for your torch)",
}


class AttentionBackendError(ConfigError):
    """A named attention backend cannot run here (the message says why and what to choose)."""


def sdpa_kernel_context(name: str):
    """`torch.nn.attention.sdpa_kernel` restricted to one SDPA kernel: SDPA raises rather than
    falling back when that kernel cannot take the inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([getattr(SDPBackend, SDPA_KERNELS[name])])


@functools.lru_cache(maxsize=None)
def external_function(name: str):
    """The attention function of an installed library, as f(q, k, v, dropout_p, scale=None) on
    (B, N, H, D) tensors (scale None: 1/sqrt(head_dim)); raises AttentionBackendError (with how to
    install it) where it is missing."""
    try:
        if name == "flash-attn2":
            fn = importlib.import_module("flash_attn").flash_attn_func
            return lambda q, k, v, p, scale=None: fn(q, k, v, dropout_p=p, softmax_scale=scale)
        if name == "flash-attn3":
            try:
                fn = importlib.import_module("flash_attn_interface").flash_attn_func
            except ImportError:
                fn = importlib.import_module("flash_attn_3.flash_attn_interface").flash_attn_func

            def fa3(q, k, v, p, scale=None):
                if p:
                    raise AttentionBackendError("flash-attn3 has no attention dropout; use "
                                                "--attention sdpa or flash-attn2 with --attn-drop")
                out = fn(q, k, v, softmax_scale=scale)
                return out[0] if isinstance(out, tuple) else out   # early releases return (out, lse)
            return fa3
        if name == "xformers":
            fn = importlib.import_module("xformers.ops").memory_efficient_attention
            return lambda q, k, v, p, scale=None: fn(q, k, v, p=p, scale=scale)
    except ImportError as exc:
        raise AttentionBackendError(f"--attention {name}: the library is not installed ({exc}); "
                                    f"{INSTALL[name]}") from exc
    raise ValueError(f"{name!r} is not an external attention backend")


def _probe_call(name: str, q: torch.Tensor, dropout_p: float) -> torch.Tensor:
    if name in SDPA_KERNELS:
        with sdpa_kernel_context(name):
            return F.scaled_dot_product_attention(q, q, q, dropout_p=dropout_p)
    t = q.transpose(1, 2)
    return external_function(name)(t, t, t, dropout_p)


@functools.lru_cache(maxsize=None)
def why_not(name: str, device: torch.device, dtype: torch.dtype, head_dim: int,
            dropout: bool = False) -> str | None:
    """None when backend `name` runs a forward and backward pass on `device` in `dtype` at
    `head_dim` (with dropout if asked); otherwise the reason, in words."""
    if name in ("sdpa", "math"):
        return None                               # always run (sdpa: torch picks the kernel)
    if name not in BACKENDS or name == "auto":
        raise ConfigError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in EXTERNAL:
        if device.type != "cuda":
            return f"{name} runs on CUDA devices only, not {device.type}"
        try:
            external_function(name)
        except AttentionBackendError as exc:
            return str(exc)
    q = torch.randn(1, 2, 16, head_dim, device=device, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _probe_call(name, q, 0.1 if dropout else 0.0).sum().backward()
        except Exception as exc:                  # the kernel's own refusal: that is the answer
            words = [str(w.message).strip() for w in caught]
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return "; ".join([first] + words)
    return None


def describe(device: torch.device, dtype: torch.dtype) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{str(dtype).replace('torch.', '')} on {where}"


def _sdpa_pick(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The kernel torch's SDPA would pick for such inputs, in words (best effort: the selector
    is a private torch function)."""
    try:
        from torch.nn.attention import SDPBackend
        q = torch.zeros(1, 2, 16, head_dim, device=device, dtype=dtype)
        return SDPBackend(torch._fused_sdp_choice(q, q, q)).name.lower()
    except Exception:
        return "its choice"


def choose_auto(device: torch.device, dtype: torch.dtype, head_dim: int,
                dropout: bool = False) -> tuple[str, str]:
    """(backend, reason) for `--attention auto`.

    - not CUDA: torch SDPA (on a CPU it runs its fused flash-style kernel for float types);
    - CUDA in fp16/bf16: FlashAttention-3 where it is installed and runs (Hopper; no dropout);
      FlashAttention-2 where torch was built without its own flash kernel and flash-attn is
      installed; otherwise torch SDPA, which picks flash / cuDNN / memory-efficient per call;
    - CUDA in fp32: torch SDPA (its memory-efficient kernel takes fp32; flash kernels do not).
    xformers is never picked automatically: torch SDPA carries the same memory-efficient kernel.
    """
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if not dropout and why_not("flash-attn3", device, dtype, head_dim) is None:
            return "flash-attn3", "FlashAttention-3 is installed and runs here (Hopper)"
        if (not torch.backends.cuda.is_flash_attention_available()
                and why_not("flash-attn2", device, dtype, head_dim, dropout) is None):
            return "flash-attn2", "this torch has no flash kernel of its own; flash-attn 2 is installed"
    pick = _sdpa_pick(device, dtype, head_dim) if device.type == "cuda" else "its fused CPU kernel"
    return "sdpa", f"torch SDPA ({pick})"
