"""Self-attention: the one place in the models where attention is computed.

`Attention` is the official module (fused qkv projection, BEiT-style q/v biases, no k bias, scale
head_dim ** -0.5); `attention()` is the single call site of the attention product, and its
`backend` says which implementation computes it:

- ``"sdpa"`` (the modules' default): `torch.nn.functional.scaled_dot_product_attention`, which
  picks its flash, memory-efficient, cuDNN or math kernel for the inputs;
- ``"sdpa-flash"``, ``"sdpa-efficient"``, ``"sdpa-cudnn"``, ``"sdpa-math"``: SDPA restricted to
  that one kernel (`torch.nn.attention.sdpa_kernel`); an error, not a fallback, where it cannot run;
- ``"math"``: the official explicit computation ``softmax(q * scale @ k^T) @ v`` in the input
  dtype (what the released code runs; slow and memory-hungry, kept as the parity truth);
- ``"flash-attn2"``, ``"flash-attn3"``, ``"xformers"``: those libraries, when installed
  (optional extras `flash` and `xformers`; FlashAttention-3 is built from source);
- ``"auto"``: resolved by `set_attention_backend` for the device, dtype and head dims
  (see `attention_backends.choose_auto`), and logged once with the reason.

Every `Attention` module carries its backend; `set_attention_backend(model, name, device, dtype)`
sets it for a whole model, checking first that a named backend can run there (never a silent
fallback: a backend the user named either runs or is refused with the reason).

The official options are constructor arguments: ``qk_scale`` (a fixed scale instead of
head_dim ** -0.5) and ``cos_attn`` (the official CosAttention: q and k L2-normalised, logits times
exp(min(scale, log 100)) with a learned per-head ``scale`` initialised to log 10; the parameter
keeps the official name, which also keeps it out of weight decay). Both reach every backend as a
scale: the cosine logit scale multiplies q, and the product then runs with scale 1.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .attention_backends import (BACKENDS, EXTERNAL, SDPA_KERNELS, AttentionBackendError, choose_auto,
                                 describe, external_function, sdpa_kernel_context, why_not)

LOG_MAX_LOGIT_SCALE = 4.6052       # log(100): the official clamp of the cosine logit scale
log = logging.getLogger("vmae2_fast")
_logged: set = set()

__all__ = ["BACKENDS", "attention", "Attention", "set_attention_backend", "AttentionBackendError"]


def attention(q, k, v, dropout_p: float = 0.0, backend: str = "sdpa", scale: float | None = None):
    """softmax(q k^T * scale) v for (B, heads, N, head_dim) tensors; scale None: 1/sqrt(head_dim)."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if backend in SDPA_KERNELS:
        with sdpa_kernel_context(backend):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if backend == "math":
        weights = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
        weights = F.dropout(weights.softmax(dim=-1), dropout_p)
        return weights @ v
    if backend in EXTERNAL:
        # The libraries take (B, N, heads, head_dim): a transpose of the qkv projection's own
        # layout (no copy), and the result goes back the same way.
        out = external_function(backend)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         dropout_p, scale)
        return out.transpose(1, 2)
    if backend == "auto":
        raise ValueError("attention backend 'auto' is resolved by set_attention_backend(model, 'auto', "
                         "device, dtype) before the model runs")
    raise ConfigError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")


class Attention(nn.Module):
    """Multi-head self-attention with BEiT-style q/v biases (K has no bias)."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0,
                 backend: str = "sdpa", qk_scale: float | None = None, cos_attn: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.backend = backend
        if cos_attn and qk_scale is not None:
            raise ValueError("cos_attn learns its own logit scale; qk_scale must be None with it")
        self.qk_scale, self.cos_attn = qk_scale, cos_attn
        if cos_attn:
            self.scale = nn.Parameter(torch.full((num_heads, 1, 1), 10.0).log())

    def forward(self, x):
        B, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scale = self.qk_scale
        if self.cos_attn:
            q = F.normalize(q, dim=-1) * self.scale.clamp(max=LOG_MAX_LOGIT_SCALE).exp().to(q.dtype)
            k, scale = F.normalize(k, dim=-1), 1.0
        out = attention(q, k, v, self.attn_drop if self.training else 0.0, self.backend, scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))

    def extra_repr(self):
        extra = ", cos_attn" if self.cos_attn else (f", qk_scale={self.qk_scale}" if self.qk_scale else "")
        return f"heads={self.num_heads}, backend={self.backend}{extra}"


def _log_once(msg: str, *args) -> None:
    key = msg % args
    if key not in _logged:
        _logged.add(key)
        log.info(msg, *args)


def set_attention_backend(model: nn.Module, backend: str, device=None, dtype=None) -> nn.Module:
    """Make every `Attention` module of `model` use `backend`; returns the model.

    `device` and `dtype` are where and in which dtype attention will run (the autocast dtype
    under mixed precision); they default to those of the model's parameters. `auto` picks per
    head dim and logs its choice and the reason once; a named backend that cannot run there
    raises AttentionBackendError (a ValueError) with the reason, before any compute.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    if not modules:
        return model
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None
                                                                else torch.device("cpu"))
    dtype = dtype or (param.dtype if param is not None else torch.float32)
    dropout = model.training and any(m.attn_drop > 0 for m in modules)   # (eval: no dropout)
    where = describe(device, dtype) if device.type != "meta" else "meta"
    choice = {}
    for head_dim in sorted({m.head_dim for m in modules}):
        if device.type == "meta":               # shapes only: nothing to probe
            choice[head_dim] = "sdpa" if backend == "auto" else backend
        elif backend == "auto":
            choice[head_dim], reason = choose_auto(device, dtype, head_dim, dropout)
            _log_once("attention: %s for head dim %d (%s), chosen by --attention auto: %s",
                      choice[head_dim], head_dim, where, reason)
        else:
            reason = why_not(backend, device, dtype, head_dim, dropout)
            if reason is not None:
                raise AttentionBackendError(
                    f"--attention {backend} cannot run head dim {head_dim} in {where}"
                    f"{' with attention dropout' if dropout else ''}: {reason.rstrip('.')}. "
                    "Choose another backend (--attention auto picks one that runs).")
            choice[head_dim] = backend
            _log_once("attention: %s for head dim %d (%s), as requested", backend, head_dim, where)
    for m in modules:
        m.backend = choice[m.head_dim]
    return model
