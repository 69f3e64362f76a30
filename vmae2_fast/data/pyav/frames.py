"""Frame folders on the CPU: the images a `media.FrameLayout` names, decoded with PIL (the
official code uses OpenCV; both read JPEG with libjpeg, so pixels may differ in the last bit where
the builds differ). A missing, unreadable or differently sized frame raises
:class:`~vmae2_fast.data.media.VideoDecodeError` naming the file, so the datasets skip and count
the clip exactly as they skip an unreadable video.

`decode_clip` and `count_clip_frames` are what the datasets call: a folder goes here, a file to
`video_io`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..media import FrameLayout, VideoDecodeError, frame_file, scan_frame_folder
from .video_io import count_frames, decode_frames

__all__ = ["read_frame_folder", "decode_clip", "count_clip_frames"]


def _read_image(path: str) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise VideoDecodeError(f"missing frame {path}") from None
    except (OSError, ValueError, SyntaxError) as exc:    # PIL's errors for truncated / bad files
        raise VideoDecodeError(f"unreadable frame {path}: {exc}") from exc


def read_frame_folder(folder: str, indices: Sequence[int], template: str, start: int) -> np.ndarray:
    """Frames ``indices`` (0-based, repeats allowed) of a folder as uint8 RGB ``(T, H, W, 3)``; each
    distinct frame is decoded once."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("read_frame_folder needs at least one frame index")
    if not os.path.isdir(folder):
        raise VideoDecodeError(f"frame folder not found: {folder}")
    decoded = {i: _read_image(frame_file(folder, template, start + i)) for i in np.unique(idx).tolist()}
    shapes = {a.shape for a in decoded.values()}
    if len(shapes) > 1:
        raise VideoDecodeError(f"frames of {folder} have different sizes {sorted(shapes)}")
    return np.stack([decoded[i] for i in idx.tolist()])


def decode_clip(path: str, indices: Sequence[int], layout: FrameLayout, start: int | None = None) -> np.ndarray:
    """The frames ``indices`` of a video file or a frame folder (``start``: its first number,
    default ``layout.start_idx``), ``(T, H, W, 3)`` uint8."""
    if os.path.isdir(path):
        return read_frame_folder(path, indices, layout.template,
                                 layout.start_idx if start is None else start)
    return decode_frames(path, indices)


def count_clip_frames(path: str, layout: FrameLayout, start: int | None = None) -> int:
    """Frames of a video file (decoded count) or a frame folder (consecutive files from start)."""
    if not os.path.isdir(path):
        return count_frames(path)
    first = layout.start_idx if start is None else start
    n, _ = scan_frame_folder(path, layout.template, first)
    if n == 0:
        raise VideoDecodeError(f"no frame named {layout.template.format(first)} in {path} (check "
                               "--fname-tmpl and --start-idx)")
    return n
