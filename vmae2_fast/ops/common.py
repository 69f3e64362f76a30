"""Rules the three fused ops share, in plain torch: the token layout (cubes in raster order), the
dtype the reference computes in, the position-table gradient and the masked-MSE token weighting.
Every backend of an op follows these, so they live once, beside the references that define them.

Shapes used throughout:
  video     (B, 3, T, H, W), normalised with (mean, std) (what the model sees)
  vis_idx   (B, N_vis) sorted token indices visible to the encoder
  dec_idx   (B, N_dec) sorted token indices the decoder reconstructs
  pos_table (1, N, C) fixed sine-cosine table
Tokens are cubes of (tubelet, p, p) pixels numbered in (t, h, w) raster order, t slowest.
"""
from __future__ import annotations

import contextlib

import torch


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) at idx (B, k) -> (B, k, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gather_table(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
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


def num_tokens(video: torch.Tensor, patch_size: int, tubelet_size: int) -> int:
    _, _, t, h, w = video.shape
    return (t // tubelet_size) * (h // patch_size) * (w // patch_size)


def check_video(video: torch.Tensor, patch_size: int, tubelet_size: int) -> None:
    if video.ndim != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got {tuple(video.shape)}")
    _, _, t, h, w = video.shape
    if t % tubelet_size or h % patch_size or w % patch_size:
        raise ValueError(f"video {tuple(video.shape)} is not divisible into {tubelet_size}x"
                         f"{patch_size}x{patch_size} cubes")


def refuse_video_grad(video: torch.Tensor) -> None:
    """The fused backends never differentiate with respect to the pixels (the clip is data)."""
    if video.requires_grad:
        raise NotImplementedError("the fused ops give no gradient to the video; detach it or use "
                                  "the reference backend")


# ---------------------------------------------------------------------------------------- dtypes
def compute_dtype(device: torch.device, *dtypes: torch.dtype) -> torch.dtype:
    """The dtype the reference would produce: the autocast dtype inside autocast, else promotion."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_to(out_dtype: torch.dtype, device: torch.device):
    """The autocast state under which the reference computes in `out_dtype`: a backend that runs
    the reference inside a custom op gets the dtype its caller asked for, not the ambient one."""
    if device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    if out_dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device.type, dtype=out_dtype)
    return torch.autocast(device.type, enabled=False)


def matmul_precision(device: torch.device) -> str:
    """How the Triton kernels multiply float32 tiles: on tensor cores (TF32) where torch's own
    float32 matmuls may (`torch.backends.cuda.matmul.allow_tf32`), else exactly: one switch for
    both, so --precision fp32 means the same arithmetic in the GEMMs and in the fused ops."""
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


# ------------------------------------------------------------------------------ gradients, loss
def table_grad(grad_rows: torch.Tensor, idx: torch.Tensor, pos_table: torch.Tensor) -> torch.Tensor:
    """Gradient of a (1, N, C) table gathered at idx (B, k), from grad rows (B, k, C)."""
    g = torch.zeros(pos_table.shape[1:], dtype=acc_dtype(grad_rows.dtype), device=grad_rows.device)
    g.index_add_(0, idx.reshape(-1), grad_rows.reshape(-1, g.shape[1]).to(g.dtype))
    return g.unsqueeze(0).to(pos_table.dtype)


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
