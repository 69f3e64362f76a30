"""Temporal sampling for stage-1 pre-training.

This is the official VideoMAE V2 rule (``HybridVideoMAE._sample_train_indices`` followed by
``get_frame_id_list`` with ``num_segments=1`` and no temporal jitter): a uniformly random start
among the windows of ``clip_len * step`` frames that fit, then exact stride ``step``. A video
shorter than the window starts at frame 0 and repeats its last reachable frame.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pretrain_frame_indices"]


def pretrain_frame_indices(n_frames: int, clip_len: int, step: int,
                           rng: np.random.Generator) -> np.ndarray:
    """Return ``clip_len`` 0-based frame indices (int64) for one pre-training clip.

    Examples: ``n_frames=100, step=4`` gives 16 indices spaced by 4 from a random start in
    ``[0, 36]``; ``n_frames=30, step=4`` gives ``[0, 4, ..., 28, 28, 28, ...]``.
    """
    if n_frames < 1:
        raise ValueError(f"cannot sample frames from a video with n_frames={n_frames} (< 1)")
    if clip_len < 1 or step < 1:
        raise ValueError(f"clip_len and step must be >= 1, got clip_len={clip_len}, step={step}")
    skip = clip_len * step
    avg = n_frames - skip + 1  # number of valid windows (the official code divides by 1 segment)
    # The official code works with a 1-based offset and appends ``offset - 1``.
    offset = int(rng.integers(avg)) + 1 if avg > 0 else 1
    out = np.empty(clip_len, dtype=np.int64)
    for k in range(clip_len):
        out[k] = offset - 1
        # Only advance while the next position stays strictly inside the video; otherwise the
        # last reachable frame repeats (this is how short videos are padded).
        if offset + step < n_frames:
            offset += step
    return out
