"""ViT building blocks with the official VideoMAE V2 parameter names.

Every module here keeps the state-dict key names of OpenGVLab/VideoMAEv2
(`patch_embed.proj`, `blocks.i.attn.qkv`, `q_bias`, `v_bias`, `mlp.fc1`, ...)
so the released checkpoints load with `strict=True`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .attention import Attention


def sinusoid_table(n_position: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The official 1-D sine-cosine table over the flattened token index, shape (1, n, dim).

    angle[pos, j] = pos / 10000 ** (2 * (j // 2) / dim); even channels take sin and odd channels
    cos, interleaved (not two concatenated halves). Built vectorised in float64 and then cast, so
    it equals the official numpy construction (which is float64 until its final cast).
    """
    pos = torch.arange(n_position, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(dim, device=device)
    inv = torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=device),
                    2 * torch.div(j, 2, rounding_mode="floor").to(torch.float64) / dim)
    angle = pos / inv
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(dtype).unsqueeze(0)


class DropPath(nn.Module):
    """Stochastic depth per sample: in training each sample's branch is dropped with probability
    ``p`` and the kept ones are scaled by 1 / (1 - p); the identity in eval mode and when off.

    ``p`` is a tensor (a buffer outside the state dict), not a float, because torch.compile guards
    on a float attribute's value: the blocks of a stack, whose rates rise linearly, would each
    compile their own graph, and past `torch._dynamo.config.recompile_limit` run uncompiled. What
    the graph does depend on is ``on``: `make_blocks` turns it on for every block of a stack with
    drop path, rate 0 included (that block draws a mask of ones, x * 1 / 1 = x exactly), so that
    one graph serves the whole stack."""

    def __init__(self, p: float = 0.0, on: bool | None = None):
        super().__init__()
        self.rate = float(p)
        self.on = self.rate > 0 if on is None else bool(on)
        self.register_buffer("p", torch.tensor(self.rate), persistent=False)

    def forward(self, x):
        if not self.on or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"p={self.rate}" + ("" if self.on == (self.rate > 0) else f", on={self.on}")


class PatchEmbed(nn.Module):
    """Cube embedding: Conv3d with kernel = stride = (tubelet, p, p). Tokens in (t, h, w) raster."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, num_frames=16,
                 tubelet_size=2):
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"input size {img_size} is not divisible by the patch size {patch_size}")
        if num_frames % tubelet_size:
            raise ConfigError(f"{num_frames} frames are not divisible by the tubelet size {tubelet_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.num_frames = num_frames
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def check_input(self, x: torch.Tensor):
        expected = (3, self.num_frames, self.img_size, self.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected video of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")

    def forward(self, x):
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block. ``init_values > 0`` adds the official layer scale (``gamma_1``,
    ``gamma_2``, initialised to init_values; every released model has it off); ``qk_scale`` and
    ``cos_attn`` go to the attention (`attention.Attention`)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, norm_eps=1e-6, init_values=0.0, qk_scale=None, cos_attn=False,
                 drop_path_on=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, qk_scale=qk_scale,
                              cos_attn=cos_attn)
        self.drop_path = DropPath(drop_path, drop_path_on)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if init_values and init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x):
        if self.gamma_1 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


def make_blocks(depth, dim, num_heads, mlp_ratio, qkv_bias, drop_path_rate, norm_eps,
                drop=0.0, attn_drop=0.0, **options) -> nn.ModuleList:
    """``depth`` blocks with drop path rising linearly to ``drop_path_rate``; ``options``:
    ``init_values``, ``qk_scale``, ``cos_attn`` (see `Block`). Drop path is on in every block or
    in none (`DropPath`): the blocks differ only in their weights and rate tensors, so a compiled
    block's graph serves them all."""
    rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")] if depth else []
    return nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, rates[i], norm_eps,
                               drop_path_on=drop_path_rate > 0, **options) for i in range(depth))


_OFF = ("none", "false", "off", "no", "")
_ALL = ("full", "true", "on", "yes", "all")


def checkpoint_interval(policy) -> int:
    """Activation checkpointing policy -> k: blocks k, 2k, ... (1-based) of each stack recompute
    their activations in the backward pass; 0 is none. Accepts 'none' / 'full' / K (an int or
    digits), and the booleans of older configs and the official `with_cp` (True is 'full')."""
    if policy is None or isinstance(policy, bool):
        return int(bool(policy))
    if isinstance(policy, int):
        k = policy
    else:
        text = str(policy).strip().lower()
        if text in _OFF or text in _ALL:
            return int(text in _ALL)
        k = int(text) if text.isdigit() else -1
    if k < 0:
        raise ConfigError(f"--activation-checkpointing must be none, full or K (every K-th block), "
                         f"got {policy!r}")
    return k


def checkpoint_policy(policy) -> str:
    """The policy's canonical name: 'none', 'full' or the block interval K as a string."""
    k = checkpoint_interval(policy)
    return {0: "none", 1: "full"}.get(k, str(k))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, activation_checkpointing=False) -> torch.Tensor:
    """Run the blocks in order; under autograd, blocks k, 2k, ... are checkpointed (torch's
    non-reentrant checkpoint: their activations are recomputed in the backward pass)."""
    k = checkpoint_interval(activation_checkpointing) if torch.is_grad_enabled() else 0
    for i, blk in enumerate(blocks):
        if k and (i + 1) % k == 0:
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


def xavier_init_(module: nn.Module):
    """Official pre-training init: xavier-uniform Linear weights, zero biases, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def trunc_normal_init_(module: nn.Module, std: float = 0.02):
    """Official classifier init: truncated normal Linear weights (bounds +-2 absolute), LN 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def position_table(num_patches: int, dim: int, learnable: bool):
    """The fixed sinusoid (returned as a tensor, to be registered as a buffer), or a learned table
    (an ``nn.Parameter``, truncated normal std 0.02 as the official ``use_learnable_pos_emb``)."""
    if not learnable:
        return sinusoid_table(num_patches, dim)
    table = nn.Parameter(torch.zeros(1, num_patches, dim))
    nn.init.trunc_normal_(table, std=0.02, a=-2.0, b=2.0)
    return table


def set_position_table(module: nn.Module, table) -> None:
    """``module.pos_embed = table``: a parameter when learned, else a non-persistent buffer."""
    if isinstance(table, nn.Parameter):
        module.pos_embed = table
    else:
        module.register_buffer("pos_embed", table, persistent=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["sinusoid_table", "DropPath", "PatchEmbed", "Mlp", "Attention", "Block", "make_blocks",
           "run_blocks", "checkpoint_interval", "checkpoint_policy", "xavier_init_", "trunc_normal_init_",
           "position_table", "set_position_table", "count_parameters"]
