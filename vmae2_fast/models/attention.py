"""Self-attention: the one place in the models where attention is computed.

`Attention` is the official module (fused qkv projection, BEiT-style q/v biases, no k bias, scale
head_dim ** -0.5); `attention()` is the single call site of the attention product, and its
`backend` says which implementation computes it:

- ``"sdpa"`` (default): `torch.nn.functional.scaled_dot_product_attention`, which picks the
  flash, memory-efficient, cuDNN or math kernel for the inputs;
- ``"math"``: the official explicit computation ``softmax(q * scale @ k^T) @ v`` in the input
  dtype (what the released code runs; slow and memory-hungry, kept as the parity truth).

Every `Attention` module carries its backend; `set_attention_backend(model, name)` sets it for a
whole model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKENDS = ("sdpa", "math")


def attention(q, k, v, dropout_p: float = 0.0, backend: str = "sdpa"):
    """softmax(q k^T / sqrt(head_dim)) v for (B, heads, N, head_dim) tensors."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if backend == "math":
        weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        weights = F.dropout(weights.softmax(dim=-1), dropout_p)
        return weights @ v
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")


class Attention(nn.Module):
    """Multi-head self-attention with BEiT-style q/v biases (K has no bias)."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0,
                 backend: str = "sdpa"):
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

    def forward(self, x):
        B, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, self.attn_drop if self.training else 0.0, self.backend)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))

    def extra_repr(self):
        return f"heads={self.num_heads}, backend={self.backend}"


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Make every `Attention` module of `model` use `backend`; returns the model."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.backend = backend
    return model
