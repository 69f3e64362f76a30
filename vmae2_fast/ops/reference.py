"""Plain-PyTorch definitions of the fused ops: the executable spec the kernels are tested against.

Each op takes index tensors (see `masking.py`), never boolean maps. Shapes:
  video     (B, 3, T, H, W), ImageNet-normalised (what the model sees)
  vis_idx   (B, N_vis) sorted token indices visible to the encoder
  dec_idx   (B, N_dec) sorted token indices the decoder reconstructs
  pos_table (1, N, C) fixed sine-cosine table
Tokens are cubes of (tubelet, p, p) pixels numbered in (t, h, w) raster order, t slowest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..kernels.rules import channel_stats, encoder_masked, masked_token_mean


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) at idx (B, k) -> (B, k, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _gather_table(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table (1, N, D) at idx (B, k) -> (B, k, D), without expanding the table to B copies."""
    return table[0][idx]


def patchify(video: torch.Tensor, patch_size: int, tubelet_size: int, channel_last: bool = False):
    """(B, C, T, H, W) -> (B, N, C*t*p*p) cubes in token order.

    channel_last=False lays each cube out as (c, t, row, col), the order of the Conv3d weight;
    channel_last=True as (t, row, col, c), the official target layout (channel fastest).
    """
    B, C, T, H, W = video.shape
    t, p = tubelet_size, patch_size
    x = video.reshape(B, C, T // t, t, H // p, p, W // p, p)
    if channel_last:
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)   # B, T', H', W', t, p, p, C
    else:
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)   # B, T', H', W', C, t, p, p
    return x.reshape(B, (T // t) * (H // p) * (W // p), C * t * p * p)


def visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size: int):
    """Embed only the encoder-visible cubes: gather them from the raw video, then project.

    Equals `conv3d(video)` flattened to tokens, plus the position table, then gathered at
    `vis_idx` (the official order of operations), but spends the projection on N_vis tokens only.
    weight: the Conv3d weight (C_e, 3, t, p, p); bias (C_e,).
    """
    cubes = gather_tokens(patchify(video, weight.shape[-1], tubelet_size), vis_idx)
    tokens = F.linear(cubes, weight.reshape(weight.shape[0], -1), bias)
    return tokens + _gather_table(pos_table, vis_idx).to(tokens.dtype)


def decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    """The decoder sequence `[z @ W^T + pos[vis], mask_token + pos[dec]]` (B, N_vis + N_dec, C_d)."""
    visible = F.linear(z, proj_weight)
    visible = visible + _gather_table(pos_table, vis_idx).to(visible.dtype)
    masked = mask_token.to(visible.dtype) + _gather_table(pos_table, dec_idx).to(visible.dtype)
    return torch.cat([visible, masked], dim=1)


@torch.no_grad()
def normalized_targets(video, idx, patch_size: int, tubelet_size: int, normalize: bool = True,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, eps: float = 1e-6):
    """Official pre-training targets for the tokens in `idx` only: (B, k, t*p*p*3).

    Pixels go back to [0, 1]; each cube is normalised per colour channel over its t*p*p pixels
    with the unbiased variance and eps added to the std; the layout is (t, row, col, c). The
    official code builds this for all N tokens and then selects; gathering first computes the
    same numbers for the ~half that enter the loss. Computed in at least float32.
    """
    dtype = torch.promote_types(video.dtype, torch.float32)
    cubes = gather_tokens(patchify(video.to(dtype), patch_size, tubelet_size, channel_last=True), idx)
    B, k, _ = cubes.shape
    cubes = cubes.view(B, k, -1, video.shape[1])                      # (B, k, t*p*p, C)
    m, s = channel_stats(mean, std, dtype, video.device)     # cached: no host copy per call
    cubes = cubes * s + m
    if normalize:
        mu = cubes.mean(dim=-2, keepdim=True)
        sd = cubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        cubes = (cubes - mu) / (sd + eps)
    return cubes.reshape(B, k, -1)


def masked_mse(pred, video, vis_idx, dec_idx, patch_size: int, tubelet_size: int,
               normalize: bool = True, denominator=None, eps: float = 1e-6, mean=IMAGENET_MEAN,
               std=IMAGENET_STD):
    """The official masked MSE: mean squared error per decoded token, weighted 1 where the encoder
    did not see the token and 0 where it did, divided by the number of weighted tokens in the
    batch (the official per-device denominator).

    `denominator` (a tensor) replaces the local count: data-parallel training passes the global
    count divided by the world size, so that the averaged gradient is that of one token-weighted
    mean over the global batch, whatever the number of GPUs. Where no decoded token is
    encoder-masked the official code divides by zero; the count is clamped to 1 here so that such a
    degenerate batch gives 0 instead of NaN.
    """
    per_token = mse_per_token(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std)
    n = (video.shape[2] // tubelet_size) * (video.shape[3] // patch_size) * (video.shape[4] // patch_size)
    return masked_token_mean(per_token, vis_idx, dec_idx, n, denominator)


def mse_per_token(pred, video, dec_idx, patch_size: int, tubelet_size: int, normalize: bool = True,
                  eps: float = 1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Each decoded token's mean squared error against its target, (B, N_dec), in at least float32."""
    target = normalized_targets(video, dec_idx, patch_size, tubelet_size, normalize, mean, std, eps)
    return (pred.to(target.dtype) - target).pow(2).mean(dim=-1)


def loss_token_count(vis_idx, dec_idx, num_tokens: int):
    """Number of tokens that enter the masked MSE (decoded and encoder-masked), as a 0-d tensor."""
    return encoder_masked(vis_idx, dec_idx, num_tokens).sum()
