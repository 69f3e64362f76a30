"""The embedded default dataset: small synthetic videos whose classes differ only by motion.

Each video shows one textured object (ellipse, rectangle or triangle) over a textured background.
Everything about appearance (textures, colours, shape, size, start position, start angle) and the
motion magnitudes are drawn from the same distribution for every class, in the same order from
the generator; the class only chooses the motion *direction*:

    move_left, move_right, move_up, move_down   translation, wrapping around the frame (a torus,
                                                so the direction never flips, unlike bouncing)
    rotate_cw, rotate_ccw                       rotation about the object's centre, in place

So a model must use motion to classify, and MAE pre-training on it has real structure to learn.
Videos are encoded as VP9/WebM (decodable by DALI on the CPU and the GPU) or optionally H.264/MP4,
and described by lists in the official formats (see ``lists.py``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..errors import DataError

__all__ = ["CLASS_NAMES", "SyntheticDataset", "ensure_synthetic_dataset",
           "render_synthetic_video", "synthetic_video_frames", "write_video"]

logger = logging.getLogger(__name__)

CLASS_NAMES = ("move_left", "move_right", "move_up", "move_down", "rotate_cw", "rotate_ccw")
# (dx, dy, spin) unit directions per class; y grows downwards, so spin > 0 turns clockwise on screen.
_MOTION = {
    "move_left": (-1, 0, 0), "move_right": (1, 0, 0), "move_up": (0, -1, 0),
    "move_down": (0, 1, 0), "rotate_cw": (0, 0, 1), "rotate_ccw": (0, 0, -1),
}
GENERATOR_VERSION = 4   # bump when the rendered content changes, so cached folders are not reused
_MARKER = ".complete"
_SPLITS = {"train": 0, "val": 1}
_CODECS = {"vp9": ("libvpx-vp9", "webm", ".webm"), "h264": ("libx264", "mp4", ".mp4")}


@dataclass
class SyntheticDataset:
    root: str
    pretrain_list: str   # pretrain_train.csv: "videos/x.webm 0 -1", relative to root
    train_list: str      # train.csv: "videos/x.webm label"
    val_list: str        # val.csv
    class_names: List[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------------- rendering
def _waves(rng: np.random.Generator, n: int, max_cycles: float, amp: float):
    """Random plane waves (frequency vectors, phases, per-channel amplitudes) of a smooth texture."""
    freq = rng.uniform(-max_cycles, max_cycles, size=(n, 2)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1)).astype(np.float32)
    amps = (rng.uniform(-amp, amp, size=(n, 3)) / np.sqrt(n)).astype(np.float32)
    return freq, phase, amps


def _eval_texture(u: np.ndarray, v: np.ndarray, colour: np.ndarray, waves, period: float):
    """Texture value at coordinates ``u, v`` (any shape): ``colour + sum_k a_k sin(...)``, RGB last."""
    freq, phase, amps = waves
    scale = np.float32(2 * np.pi / period)
    # (n, *shape): every wave evaluated at every point at once.
    arg = (freq[:, 0].reshape((-1,) + (1,) * u.ndim) * u
           + freq[:, 1].reshape((-1,) + (1,) * v.ndim) * v) * scale
    arg += phase.reshape((-1,) + (1,) * u.ndim)
    return colour + np.tensordot(np.sin(arg), amps, axes=(0, 0))   # (*shape, 3)


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray, a: float, b: float):
    """Approximate signed distance in pixels to the object outline (< 0 inside)."""
    if shape == "ellipse":
        return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * min(a, b)
    if shape == "rectangle":
        return np.maximum(np.abs(u) - a, np.abs(v) - b)
    # Equilateral triangle with circumradius a: intersection of three half-planes.
    inradius = a / 2
    angles = np.deg2rad([90.0, 210.0, 330.0]).astype(np.float32)
    d = [np.cos(t) * u + np.sin(t) * v - inradius for t in angles]
    return np.maximum(np.maximum(d[0], d[1]), d[2])


def render_synthetic_video(class_index: int, rng: np.random.Generator, num_frames: int,
                           size: int) -> np.ndarray:
    """Draw one video of class ``class_index``: uint8 RGB ``(num_frames, size, size, 3)``.

    All random draws happen in the same order for every class (the class is used last), so
    appearance and speed have the same distribution in every class.
    """
    S, T = int(size), int(num_frames)
    f32 = np.float32
    # Appearance: a darker background and a brighter object, each with its own smooth texture.
    bg_colour = rng.uniform(0.15, 0.5, size=3).astype(f32)
    # A few low-frequency waves (at most 0.6 cycles per frame width, small enough not to clip):
    # each 16-pixel patch holds a clear ramp correlated with its neighbours' (~0.5 after
    # per-patch normalisation), so masked patches are partly predictable from visible ones.
    bg_waves = _waves(rng, 3, 0.6, 0.5)
    obj_colour = rng.uniform(0.45, 0.9, size=3).astype(f32)
    obj_waves = _waves(rng, 5, 1.5, 0.5)
    shape = ("ellipse", "rectangle", "triangle")[int(rng.integers(3))]
    a = f32(S * rng.uniform(0.14, 0.21))
    b = f32(a * rng.uniform(0.5, 0.85))
    centre0 = rng.uniform(0, S, size=2).astype(f32)
    angle0 = f32(rng.uniform(0, 2 * np.pi))
    # Motion magnitudes: ~2.5-4 px/frame at 80 px, 5-9 degrees/frame: clearly visible over
    # 16 frames sampled at stride 2-4.
    speed = f32(S * rng.uniform(0.03, 0.05))
    spin = f32(np.deg2rad(rng.uniform(5.0, 9.0)))
    dx, dy, dspin = _MOTION[CLASS_NAMES[class_index]]

    t = np.arange(T, dtype=f32)
    cx = (centre0[0] + dx * speed * t).reshape(T, 1, 1)
    cy = (centre0[1] + dy * speed * t).reshape(T, 1, 1)
    theta = (angle0 + dspin * spin * t).reshape(T, 1, 1)

    yy, xx = np.meshgrid(np.arange(S, dtype=f32) + 0.5, np.arange(S, dtype=f32) + 0.5,
                         indexing="ij")
    background = _eval_texture(xx, yy, bg_colour, bg_waves, S)            # (S, S, 3), static
    # Offsets to the object centre on the torus, in [-S/2, S/2): the object wraps around.
    ox = (xx - cx + S / 2) % S - S / 2                                     # (T, S, S)
    oy = (yy - cy + S / 2) % S - S / 2
    cos, sin = np.cos(theta), np.sin(theta)
    u = cos * ox + sin * oy            # object-local coordinates (rotate the offset by -theta)
    v = -sin * ox + cos * oy
    # Anti-aliased coverage from the signed distance; texture attached to the object's frame.
    alpha = np.clip(0.5 - _signed_distance(shape, u, v, a, b), 0.0, 1.0)[..., None]
    obj = _eval_texture(u, v, obj_colour, obj_waves, 2 * a)
    frames = background * (1 - alpha) + obj * alpha
    return (np.clip(frames, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _video_rng(seed: int, split: str, class_index: int, k: int) -> np.random.Generator:
    # One independent stream per video: any video can be re-rendered alone (tests use this).
    return np.random.default_rng([seed, _SPLITS[split], class_index, k])


def synthetic_video_frames(seed: int, split: str, class_index: int, k: int, num_frames: int,
                           size: int) -> np.ndarray:
    """The exact frames (before encoding) of video ``k`` of ``class_index`` in ``split``."""
    return render_synthetic_video(class_index, _video_rng(seed, split, class_index, k),
                                  num_frames, size)


def _video_name(split: str, class_index: int, k: int, ext: str) -> str:
    return f"videos/{split}_{CLASS_NAMES[class_index]}_{k:04d}{ext}"


# ------------------------------------------------------------------------------------ encoding
def write_video(path: str, frames: np.ndarray, fps: int = 12, codec: str = "vp9") -> None:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` (H, W even) to ``path`` (VP9/WebM or H.264/MP4)."""
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    encoder, fmt, _ = _CODECS[codec]
    _, h, w, _ = frames.shape
    import av                       # imported here: the package imports without PyAV
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = 12    # short keyframe interval: cheap seeking later
        if codec == "vp9":
            # Real-time speed preset; constant quality (crf with b=0) keeps the textures.
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "18", "b": "0",
                              "lag-in-frames": "0"}
        else:
            stream.options = {"preset": "ultrafast", "crf": "16"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():   # flush
            container.mux(packet)


# ---------------------------------------------------------------------------------- the folder
def _default_cache_dir() -> str:
    env = os.environ.get("VMAE2_FAST_CACHE")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "vmae2_fast")


def _describe(root: str, params: dict) -> SyntheticDataset:
    return SyntheticDataset(root=root,
                            pretrain_list=os.path.join(root, "pretrain_train.csv"),
                            train_list=os.path.join(root, "train.csv"),
                            val_list=os.path.join(root, "val.csv"),
                            class_names=list(params["class_names"]))


def _read_marker(root: str) -> Optional[dict]:
    try:
        with open(os.path.join(root, _MARKER), "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _generate_into(folder: str, params: dict, progress: bool) -> None:
    ext = _CODECS[params["codec"]][2]
    os.makedirs(os.path.join(folder, "videos"))
    n_classes = len(CLASS_NAMES)
    jobs = [(split, c, k) for split, per_class in (("train", params["videos_per_class_train"]),
                                                     ("val", params["videos_per_class_val"]))
            for k in range(per_class) for c in range(n_classes)]   # classes interleaved
    lines = {"pretrain": [], "train": [], "val": []}
    from tqdm import tqdm  # imported here: only generation needs it
    # disable=None: no bar when stderr is not a terminal (logs, CI), a bar otherwise
    bar = tqdm(jobs, desc="synthetic videos", unit="video", disable=None if progress else True)
    for split, c, k in bar:
        frames = synthetic_video_frames(params["seed"], split, c, k, params["num_frames"],
                                        params["size"])
        name = _video_name(split, c, k, ext)
        write_video(os.path.join(folder, name), frames, params["fps"], params["codec"])
        lines[split].append(f"{name} {c}")
        if split == "train":
            lines["pretrain"].append(f"{name} 0 -1")
    for fname, key in (("pretrain_train.csv", "pretrain"), ("train.csv", "train"),
                       ("val.csv", "val")):
        with open(os.path.join(folder, fname), "w", encoding="utf-8") as f:
            f.write("\n".join(lines[key]) + "\n")
    with open(os.path.join(folder, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(CLASS_NAMES) + "\n")
    with open(os.path.join(folder, _MARKER), "w", encoding="utf-8") as f:  # written last
        json.dump(params, f, indent=1, sort_keys=True)


def ensure_synthetic_dataset(root: Optional[str] = None, *, videos_per_class_train: int = 64,
                             videos_per_class_val: int = 8, num_frames: int = 48, size: int = 80,
                             fps: int = 12, seed: int = 0, codec: str = "vp9",
                             progress: bool = True) -> SyntheticDataset:
    """Return the synthetic dataset, generating it first if it is not there yet.

    ``root=None`` uses ``$VMAE2_FAST_CACHE`` (else ``~/.cache/vmae2_fast``) and a folder named
    ``synthetic-v1-<hash of the parameters>``, so different parameters never collide. Generation
    writes into a temporary sibling folder and moves it into place with one ``os.replace``: a
    crashed or concurrent generation never leaves a half dataset at ``root``. Under torchrun,
    call it on rank 0 first and then barrier, or every rank generates (correctly, but wastefully).
    """
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and >= 16 (yuv420p), got {size}")
    if num_frames < 1 or videos_per_class_train < 1 or videos_per_class_val < 0 or seed < 0:
        raise ValueError("num_frames and videos_per_class_train must be >= 1, "
                         "videos_per_class_val and seed >= 0")
    params = dict(version=GENERATOR_VERSION, class_names=list(CLASS_NAMES),
                  videos_per_class_train=int(videos_per_class_train),
                  videos_per_class_val=int(videos_per_class_val), num_frames=int(num_frames),
                  size=int(size), fps=int(fps), seed=int(seed), codec=codec)
    if root is None:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
        root = os.path.join(_default_cache_dir(), f"synthetic-v{GENERATOR_VERSION}-{digest}")
    root = os.path.abspath(os.fspath(root))

    def check_existing() -> Optional[SyntheticDataset]:
        marker = _read_marker(root)
        if marker is None:
            return None
        if marker != params:
            raise DataError(f"{root} holds a synthetic dataset made with other parameters "
                             f"({marker}); pass another root or root=None")
        return _describe(root, params)

    found = check_existing()
    if found is not None:
        return found
    if os.path.isdir(root) and os.listdir(root):
        raise RuntimeError(f"{root} exists but is not a complete synthetic dataset "
                           f"(no {_MARKER} marker); delete it or pass another root")

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    n_videos = len(CLASS_NAMES) * (videos_per_class_train + videos_per_class_val)
    print(f"vmae2_fast: generating the synthetic dataset once ({len(CLASS_NAMES)} classes, "
          f"{n_videos} videos, {num_frames} frames of {size}x{size}, {codec}) in {root} ...",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        _generate_into(tmp, params, progress)
        print(f"vmae2_fast: synthetic dataset generated in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        try:
            os.replace(tmp, root)   # atomic; also succeeds over an empty directory
        except OSError:
            # Another process finished first (the target is now a non-empty directory).
            found = check_existing()
            if found is None:
                raise
            return found
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return _describe(root, params)
