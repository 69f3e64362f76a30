"""Rules every face of the fused ops shares, in plain torch (no triton import), so that the Triton
kernels of this package, the C++ CPU face (`vmae2_fast.ops.cpp`) and the reference compute the same
output dtypes, the same position-table gradients and the same loss weighting.

Importing this module never compiles or decorates a kernel: the package loads its Triton ops lazily.
"""
from __future__ import annotations

import torch

# Defaults of the standalone kernels (ImageNet statistics, what VideoMAE normalises clips with).
# vmae2_fast passes its own constants explicitly; this package must not import vmae2_fast.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def compute_dtype(device: torch.device, *dtypes: torch.dtype) -> torch.dtype:
    """The dtype the reference would produce: the autocast dtype inside autocast, else promotion."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


_STATS: dict = {}


def channel_stats(mean, std, dtype: torch.dtype, device: torch.device):
    """The per-channel (mean, std) as two 1-D tensors on `device`, built once per (values, dtype,
    device) and then reused. Building them on every call (`torch.as_tensor(mean, device=...)`)
    copies host memory to the GPU and waits for it: a host sync inside the training step."""
    key = (tuple(float(x) for x in mean), tuple(float(x) for x in std), dtype, torch.device(device))
    stats = _STATS.get(key)
    if stats is None:
        # Built outside any inference-mode / no-grad context so the tensors can serve any later call.
        with torch.inference_mode(False), torch.no_grad():
            stats = tuple(torch.tensor(v, dtype=dtype, device=device) for v in key[:2])
        if not torch.compiler.is_compiling():     # traced calls get constants in their graph
            _STATS[key] = stats
    return stats


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def table_grad(grad_rows: torch.Tensor, idx: torch.Tensor, pos_table: torch.Tensor) -> torch.Tensor:
    """Gradient of a (1, N, C) table gathered at idx (B, k), from grad rows (B, k, C)."""
    g = torch.zeros(pos_table.shape[1:], dtype=acc_dtype(grad_rows.dtype), device=grad_rows.device)
    g.index_add_(0, idx.reshape(-1), grad_rows.reshape(-1, g.shape[1]).to(g.dtype))
    return g.unsqueeze(0).to(pos_table.dtype)


def embed_grads(grad_out, weight, pos_table, vis_idx, out_dtype, bias_dtype, needs, cubes=None):
    """(grad_weight, grad_bias, grad_pos) of the visible patch embedding, None where `needs` says
    so. `cubes()` returns the visible cubes as (B * N_vis, K) rows, in the Conv3d weight's order
    (each face re-gathers them from the video its own way); a face that computes the weight
    gradient in its own kernel passes needs[0] False."""
    g = grad_out.reshape(-1, weight.shape[0])
    gw = gb = gp = None
    if needs[0]:
        gw = (g.to(out_dtype).t() @ cubes().to(out_dtype)).view_as(weight).to(weight.dtype)
    if needs[1]:
        gb = g.sum(0, dtype=acc_dtype(g.dtype)).to(bias_dtype)
    if needs[2]:
        gp = table_grad(grad_out, vis_idx, pos_table)
    return gw, gb, gp


def decoder_grads(grad_out, z, w, pos_table, vis_idx, dec_idx, mask_token, out_dtype, needs):
    """(grad_z, grad_weight, grad_pos, grad_token) of the decoder input assembly, None where
    `needs` says so: GEMMs in the forward's dtype, the table scatter and the token sum."""
    nv = z.shape[1]
    g_vis = grad_out[:, :nv].to(out_dtype)
    gz = gw = gp = gt = None
    if needs[0]:
        gz = (g_vis @ w.to(out_dtype)).to(z.dtype)
    if needs[1]:
        gw = (g_vis.reshape(-1, w.shape[0]).t() @ z.reshape(-1, z.shape[2]).to(out_dtype)).to(w.dtype)
    if needs[2]:
        gp = table_grad(grad_out[:, :nv], vis_idx, pos_table)
        gp += table_grad(grad_out[:, nv:], dec_idx, pos_table)
    if needs[3]:
        gt = grad_out[:, nv:].sum((0, 1), dtype=acc_dtype(out_dtype)).to(mask_token.dtype)
        gt = gt.view(mask_token.shape)
    return gz, gw, gp, gt


def num_tokens(video: torch.Tensor, patch_size: int, tubelet_size: int) -> int:
    _, _, t, h, w = video.shape
    return (t // tubelet_size) * (h // patch_size) * (w // patch_size)


def refuse_video_grad(video: torch.Tensor) -> None:
    if video.requires_grad:
        raise NotImplementedError("the fused ops give no gradient to the video; detach it or use "
                                  "the reference backend")


def check_video(video: torch.Tensor, patch_size: int, tubelet_size: int) -> None:
    if video.ndim != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got {tuple(video.shape)}")
    _, _, t, h, w = video.shape
    if t % tubelet_size or h % patch_size or w % patch_size:
        raise ValueError(f"video {tuple(video.shape)} is not divisible into {tubelet_size}x"
                         f"{patch_size}x{patch_size} cubes")
    refuse_video_grad(video)


def encoder_masked(vis_idx: torch.Tensor, dec_idx: torch.Tensor, n: int) -> torch.Tensor:
    """For every decoded token, True if the encoder did not see it (it enters the loss); (B, N_dec).
    Scatter and gather on the device: no host sync."""
    visible = torch.zeros(vis_idx.shape[0], n, dtype=torch.bool, device=vis_idx.device)
    visible.scatter_(1, vis_idx.long(), True)
    return ~visible.gather(1, dec_idx.long())


def masked_token_mean(per_token: torch.Tensor, vis_idx: torch.Tensor, dec_idx: torch.Tensor, n: int,
                      denominator=None) -> torch.Tensor:
    """The official masked-MSE tail: each decoded token's error weighted 1 where the encoder did not
    see it and 0 where it did, summed and divided by the number of weighted tokens (or by
    `denominator`, the global count / world size under data parallelism). The count is clamped to 1,
    so a batch with no weighted token gives 0 where the official code gives NaN."""
    weight = encoder_masked(vis_idx, dec_idx, n).to(per_token.dtype)
    if denominator is None:
        denominator = weight.sum()
    return (per_token * weight).sum() / denominator.clamp_min(1)
