"""Sliding-window clip features (`python -m vmae2_fast.extract_features`; its --help has the
details): windows of consecutive frames streamed from PyAV, each the classifier's pooled
``forward_features``, one float32 ``(windows, width)`` .npy per video."""
from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..logs import setup_logging
from ..config import FeaturesConfig
from ..data.media import VideoDecodeError
from ..data.pyav.video_io import iter_frames, open_video
from ..data.transforms import normalize
from ..errors import ConfigError, MissingFileError
from ..models import build_classifier
from ..models.zoo import model_options
from ..models.weights import extract_state_dict, load_classifier_weights, normalize_keys, read_checkpoint
from ..train.storage import prepare_output_dir
from .build import pick_device

log = logging.getLogger("vmae2_fast")
VIDEO_EXT = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")


def window_starts(n_frames: int, span: int, stride: int) -> list:
    return list(range(0, n_frames - span + 1, stride)) if n_frames >= span else [0]


def iter_windows(path: str, window: int, stride: int, frame_stride: int, size: int):
    """Yield ``(start_frame, uint8 tensor (window, 3, size, size))`` streaming through the video."""
    span = (window - 1) * frame_stride + 1
    buf: deque = deque(maxlen=span)
    container, stream = open_video(path, 1)
    n = 0
    try:
        for i, frame in enumerate(iter_frames(container, stream, path)):
            x = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None].float()
            buf.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0])
            n = i + 1
            start = i - span + 1
            if start >= 0 and start % stride == 0:
                yield start, torch.stack(list(buf)[::frame_stride])
    finally:
        container.close()
    if n == 0:
        raise VideoDecodeError(f"no decodable frames in {path}")
    if n < span:
        frames = list(buf)[::frame_stride]
        frames += [frames[-1]] * (window - len(frames))
        yield 0, torch.stack(frames)


def prepare(clip: torch.Tensor, imagenet_norm: bool) -> torch.Tensor:
    """(T, 3, S, S) 0..255 -> (3, T, S, S)."""
    if imagenet_norm:
        return normalize(clip)
    return (clip / 255.0).permute(1, 0, 2, 3).contiguous()


def run(a: FeaturesConfig) -> dict:
    """One ``<video name>.npy`` of pooled window features per video of ``a.videos``."""
    raw = read_checkpoint(a.checkpoint, trust_code=a.trust_checkpoint)
    cfg = raw.get("config", {}) if isinstance(raw, dict) else {}
    model_name = a.model or cfg.get("model")
    if not model_name:
        raise ConfigError(f"{a.checkpoint} does not record its model; pass --model")
    sd, _ = normalize_keys(extract_state_dict(raw)[0])
    del raw
    n_cls = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    size = a.input_size or cfg.get("input_size", 224)
    videos = sorted(p for p in Path(a.videos).rglob("*") if p.suffix.lower() in VIDEO_EXT)
    if not videos:
        raise MissingFileError(f"no videos ({', '.join(VIDEO_EXT)}) under {a.videos}")
    setup_logging(None, True)
    out = prepare_output_dir(a.out, "--out")       # before the model is built
    device = pick_device(a.device)
    model = build_classifier(model_name, n_cls, img_size=size, num_frames=a.window,
                             tubelet_size=cfg.get("tubelet_size", 2),
                             use_mean_pooling=cfg.get("use_mean_pooling", True), **model_options(cfg))
    load_classifier_weights(model, a.checkpoint, trust_code=a.trust_checkpoint)
    model = model.to(device).eval()
    done, t0 = 0, time.time()
    for path in videos:
        target = out / (path.stem + ".npy")
        if target.exists() and not a.overwrite:
            continue
        feats, batch = [], []

        def flush():
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                x = torch.stack([prepare(c, a.imagenet_norm) for c in batch]).to(device)
                feats.append(model.forward_features(x).float().cpu())
            batch.clear()

        try:
            for _, clip in iter_windows(str(path), a.window, a.stride, a.frame_stride, size):
                batch.append(clip)
                if len(batch) == a.batch_size:
                    flush()
            if batch:
                flush()
        except VideoDecodeError as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        np.save(target, torch.cat(feats).numpy().astype(np.float32))
        done += 1
        log.info("%s: %d windows -> %s", path.name, sum(f.shape[0] for f in feats), target)
    return {"videos": done, "wall_s": time.time() - t0}
