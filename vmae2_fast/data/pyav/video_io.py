"""Video decoding on the CPU with PyAV (FFmpeg).

This is the CPU fallback of the data path (the fast path decodes on the GPU with DALI). The
official code uses decord at native resolution; we decode the same frames with FFmpeg through
PyAV and convert them to RGB with swscale. Every failure (missing file, not a video, corrupt
stream, too few frames) is raised as :class:`VideoDecodeError` naming the file, so the dataset
can skip the video with one ``except`` clause.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from ..media import VideoDecodeError

__all__ = ["count_frames", "decode_frames", "open_video", "iter_frames"]


def _av():
    """PyAV, imported at the first decode: the package (and the GPU tests that read no video)
    must import on a machine without PyAV, such as the GPU machines `bench/gpu_suite.sh` runs on."""
    import av
    return av


def open_video(path: str, threads: int):
    """Open ``path`` and return ``(container, video_stream)``; raise VideoDecodeError on failure."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(f"video file not found: {path}")
    if os.path.isdir(path):
        raise VideoDecodeError(f"{path} is a directory, not a video file (frame folders are read "
                               "by data.pyav.frames)")
    av = _av()
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(f"cannot open video {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"no video stream in {path}")
    stream = container.streams.video[0]
    # One decoding thread by default: DataLoader workers already run one video per process, and
    # extra FFmpeg threads per worker would oversubscribe the cores (decord num_threads=1 too).
    stream.codec_context.thread_count = max(int(threads), 0)
    return container, stream


def iter_frames(container, stream, path: str) -> Iterator:
    """Yield decoded frames in presentation order, turning FFmpeg errors into VideoDecodeError."""
    av = _av()
    try:
        for frame in container.decode(stream):
            yield frame
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(f"corrupt video {path}: {exc}") from exc


def count_frames(path: str, *, threads: int = 1) -> int:
    """Number of decodable frames in the first video stream of ``path``.

    Containers that store a frame count (MP4) answer from the header. WebM/Matroska store none
    (``stream.frames == 0``), so the frames are decoded and counted; this costs one full decode.
    """
    container, stream = open_video(path, threads)
    try:
        n = int(stream.frames or 0)
        if n <= 0:
            # Decode without pixel-format conversion: counting only.
            n = sum(1 for _ in iter_frames(container, stream, path))
    finally:
        container.close()
    if n <= 0:
        raise VideoDecodeError(f"no decodable frames in {path}")
    return n


def decode_frames(path: str, indices: Sequence[int], *, threads: int = 1) -> np.ndarray:
    """Decode the frames ``indices`` (0-based, any order, repeats allowed) of ``path``.

    Returns uint8 RGB frames of shape ``(len(indices), H, W, 3)`` in the order of ``indices``.
    The video is decoded once, sequentially, from the start up to ``max(indices)``; each distinct
    frame is converted to RGB once even when it repeats.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("decode_frames needs at least one frame index")
    if idx.min() < 0:
        raise ValueError(f"negative frame index in {idx.tolist()}")
    last = int(idx.max())
    wanted = set(idx.tolist())
    rgb_by_index: dict[int, np.ndarray] = {}

    container, stream = open_video(path, threads)
    n_seen = 0
    try:
        for i, frame in enumerate(iter_frames(container, stream, path)):
            n_seen = i + 1
            if i in wanted:
                rgb_by_index[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    finally:
        container.close()

    if last >= n_seen:
        raise VideoDecodeError(
            f"video too short: {path} has {n_seen} decodable frames, frame {last} was requested")
    first = rgb_by_index[int(idx[0])]
    out = np.empty((idx.size,) + first.shape, dtype=np.uint8)
    for k, i in enumerate(idx.tolist()):
        out[k] = rgb_by_index[i]
    return out
