"""PNG preview of a masked-autoencoder reconstruction for one video clip."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..constants import IMAGENET_MEAN, IMAGENET_STD

GREY = 0.5          # fill value (in [0, 1]) of tokens that are not shown
TARGET_EPS = 1e-6   # added to the std (not the variance), as in the training target

PathLike = Union[str, os.PathLike]

_DESCRIPTION = (
    "Rows: input; masked input (encoder-invisible tokens grey); reconstruction "
    "(visible tokens from the input, decoded tokens = prediction de-normalised "
    "with the TRUE patch mean/std (standard MAE visualisation, so colours and "
    "contrast are borrowed from the input), other tokens grey).")


def _as_tensor(x, dtype=None) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.cpu()
    return t.to(dtype) if dtype is not None else t


def _to_tokens(frames: torch.Tensor, tubelet: int, p: int) -> torch.Tensor:
    """(3, T, H, W) -> (N, tubelet*p*p, 3), tokens raster (t', h', w'), pixels (t, row, col)."""
    c, t, h, w = frames.shape
    x = frames.reshape(c, t // tubelet, tubelet, h // p, p, w // p, p)
    x = x.permute(1, 3, 5, 2, 4, 6, 0)  # T', H', W', tubelet, p, p, C
    return x.reshape(-1, tubelet * p * p, c)


def _from_tokens(tokens: torch.Tensor, t: int, h: int, w: int, tubelet: int, p: int) -> torch.Tensor:
    """Inverse of :func:`_to_tokens`, returning frames as (T, H, W, 3)."""
    x = tokens.reshape(t // tubelet, h // p, w // p, tubelet, p, p, 3)
    x = x.permute(0, 3, 1, 4, 2, 5, 6)  # T', tubelet, H', p, W', p, C
    return x.reshape(t, h, w, 3)


def _check_indices(name: str, idx: torch.Tensor, n_tokens: int) -> torch.Tensor:
    idx = idx.reshape(-1).long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_tokens):
        raise ValueError(f"{name} has token indices outside [0, {n_tokens})")
    return idx


def save_reconstruction_preview(
    path: PathLike,
    video,
    vis_idx,
    dec_idx,
    pred,
    *,
    patch_size: int,
    tubelet_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_frames: int = 8,
    gap: int = 2,
) -> Path:
    """Write a 3-row PNG (input / masked input / reconstruction) for ONE sample.

    Args:
        video: (3, T, H, W) float, normalised with ``mean``/``std``.
        vis_idx: (N_vis,) token indices visible to the encoder.
        dec_idx: (N_dec,) token indices the decoder predicted, in ``pred`` order.
        pred: (N_dec, tubelet*p*p*3) decoder output in the normalised-target
            space, per-token layout (t_in_tubelet, row, col, channel), channel fastest.

    Tokens are numbered t'*H'*W' + h'*W' + w'. ``pred`` approximates the
    per-token, per-channel normalised pixels ``(x - mean) / (std_unbiased + 1e-6)``
    of the [0, 1] video; it is mapped back to pixels with the statistics of the
    TRUE patch (standard MAE visualisation trick: the preview therefore shows
    structure, not the model's own colour/brightness estimate). In the
    reconstruction row a token that is both visible and decoded is shown from
    the input; tokens neither visible nor decoded are grey.

    Up to ``max_frames`` evenly spaced frames form the columns. Frame ``j`` of
    row ``r`` sits at x = j*(W+gap), y = r*(H+gap); gaps are white. The file is
    written atomically (temp file + ``os.replace``). Returns the path.
    """
    path = Path(path)
    p, tub = int(patch_size), int(tubelet_size)
    video = _as_tensor(video, torch.float32)
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be (3, T, H, W), got {tuple(video.shape)}")
    _, t, h, w = video.shape
    if t % tub or h % p or w % p:
        raise ValueError(f"video {tuple(video.shape)} is not divisible by tubelet={tub}, patch={p}")
    n_tokens = (t // tub) * (h // p) * (w // p)
    vis = _check_indices("vis_idx", _as_tensor(vis_idx), n_tokens)
    dec = _check_indices("dec_idx", _as_tensor(dec_idx), n_tokens)
    pred = _as_tensor(pred, torch.float32)
    if pred.shape != (dec.numel(), tub * p * p * 3):
        raise ValueError(f"pred must be ({dec.numel()}, {tub * p * p * 3}), got {tuple(pred.shape)}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")

    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
    tokens = _to_tokens(video * std_t + mean_t, tub, p)          # (N, tub*p*p, 3) in [0, 1]

    visible = torch.zeros(n_tokens, dtype=torch.bool)
    visible[vis] = True
    decoded_only = torch.zeros(n_tokens, dtype=torch.bool)
    decoded_only[dec] = True
    decoded_only &= ~visible

    masked = torch.where(visible[:, None, None], tokens, torch.full_like(tokens, GREY))

    # De-normalise with the true patch statistics (same estimator as the target).
    true = tokens[dec]
    pix = pred.reshape(dec.numel(), tub * p * p, 3) * (true.std(dim=1, keepdim=True) + TARGET_EPS) \
        + true.mean(dim=1, keepdim=True)
    recon = masked.clone()
    keep = decoded_only[dec]                                       # skip tokens shown from input
    recon[dec[keep]] = pix[keep]

    rows = [_from_tokens(x, t, h, w, tub, p) for x in (tokens, masked, recon)]  # (T, H, W, 3)
    n_show = min(max_frames, t)
    frame_ids = np.unique(np.linspace(0, t - 1, n_show).round().astype(np.int64))
    n_cols = len(frame_ids)
    canvas = np.full((3 * h + 2 * gap, n_cols * w + (n_cols - 1) * gap, 3), 255, dtype=np.uint8)
    for r, frames in enumerate(rows):
        picked = (frames[torch.from_numpy(frame_ids)].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        for j in range(n_cols):
            canvas[r * (h + gap): r * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = picked[j]

    info = PngInfo()
    info.add_text("Description", _DESCRIPTION)
    info.add_text("Frames", ",".join(str(int(i)) for i in frame_ids))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(canvas).save(f, format="PNG", pnginfo=info)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
