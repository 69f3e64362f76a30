"""Camera-like test videos: what the decoding tests and `bench/decode.py` read instead of Kinetics.

Smooth synthetic clips compress unrealistically well (few bits, few references, no B-frames), so
decoding them says little about real files. These are made to cost an encoder and a decoder
what footage does, without shipping any:

* a scene: colour 1/f noise (the power spectrum of natural images), with a brighter "sky" band,
  a few large soft blobs and hard-edged blocks, bigger than the frame so that the camera can
  move over it;
* a camera: a slow pan along a smooth random path plus hand-held jitter, whole pixels;
* actors: 3-6 textured ellipses crossing the frame at their own speeds, occluding each other;
* light: a slow global brightness drift; sensor grain: N(0, sigma) per pixel and frame;
* optionally a cut: from some frame on, another scene (an encoder puts a keyframe there).

It is still synthetic: no faces, no real motion blur, no compression history. Say so where a
number measured on it is reported.

`write_natural_video` encodes with PyAV: H.264 (libx264) with x264's own defaults unless told
(preset medium, crf 23, keyframe interval 250 with scene-cut keyframes, 3 B-frames, B-pyramid),
or VP9 (libvpx-vp9); ``gop`` forces a fixed keyframe interval.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["NaturalVideo", "natural_frames", "write_natural_video"]


@dataclass(frozen=True)
class NaturalVideo:
    width: int = 568
    height: int = 320
    frames: int = 300
    fps: int = 30
    seed: int = 0
    grain: float = 2.0            # sensor noise, grey levels (sigma)
    cut_at: Optional[int] = None  # first frame of a second scene, or None


def _pink_noise(rng: np.random.Generator, h: int, w: int, slope: float = 1.1) -> np.ndarray:
    """(h, w, 3) float in 0..255 whose spectrum falls as 1/f**slope, channels correlated like
    the colours of a scene (a shared luminance plus weaker chroma)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** -slope
    amp[0, 0] = 0.0

    def field():
        spec = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
        x = np.fft.irfft2(spec, s=(h, w))
        return x / (x.std() + 1e-9)

    luma = field()
    img = np.stack([luma + 0.35 * field() for _ in range(3)], -1)
    tint = rng.uniform(-0.4, 0.4, 3)
    img = 118 + 42 * img + 40 * tint
    return np.clip(img, 0, 255)


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = _pink_noise(rng, h, w)
    y = np.arange(h, dtype=np.float64)[:, None, None]
    horizon = rng.uniform(0.25, 0.45) * h
    sky = 1 / (1 + np.exp((y - horizon) / (0.03 * h)))           # 1 above the horizon
    img = img * (1 - 0.5 * sky) + sky * np.array(rng.uniform(150, 230, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(3, 7))):                        # big soft blobs: trees, walls
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.08, 0.25) * min(h, w)
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - 0.6 * m) + 0.6 * m * rng.uniform(30, 220, 3)
    for _ in range(int(rng.integers(4, 10))):                       # hard edges: buildings, posts
        bh, bw = int(rng.uniform(0.05, 0.5) * h), int(rng.uniform(0.02, 0.3) * w)
        y0, x0 = int(rng.uniform(0, h - bh)), int(rng.uniform(0, w - bw))
        shade = rng.uniform(0.3, 1.2)
        img[y0:y0 + bh, x0:x0 + bw] = img[y0:y0 + bh, x0:x0 + bw] * 0.6 + shade * rng.uniform(20, 110, 3)
    return img.astype(np.float32)


class _Actor:
    def __init__(self, rng: np.random.Generator, v: NaturalVideo):
        self.ry, self.rx = rng.uniform(0.08, 0.22, 2) * v.height
        self.texture = _pink_noise(rng, int(2 * self.ry) + 2, int(2 * self.rx) + 2, 1.4).astype(np.float32)
        self.texture = self.texture * 0.6 + 0.4 * rng.uniform(20, 235, 3).astype(np.float32)
        self.y0, self.x0 = rng.uniform(0, v.height), rng.uniform(-self.rx, v.width + self.rx)
        speed = rng.uniform(0.5, 4.0)
        angle = rng.uniform(0, 2 * np.pi)
        self.vy, self.vx = speed * np.sin(angle) * 0.4, speed * np.cos(angle)
        self.wobble = rng.uniform(0, 2 * np.pi)

    def paste(self, frame: np.ndarray, t: int) -> None:
        h, w = frame.shape[:2]
        cy = self.y0 + self.vy * t + 3 * np.sin(t / 9 + self.wobble)
        cx = (self.x0 + self.vx * t) % (w + 4 * self.rx) - 2 * self.rx
        th, tw = self.texture.shape[:2]
        top, left = int(round(cy - th / 2)), int(round(cx - tw / 2))
        y0, y1, x0, x1 = max(top, 0), min(top + th, h), max(left, 0), min(left + tw, w)
        if y0 >= y1 or x0 >= x1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = ((yy - cy) / self.ry) ** 2 + ((xx - cx) / self.rx) ** 2
        alpha = np.clip((1.0 - inside) * 6, 0, 1)[..., None]        # a soft edge of a few pixels
        tex = self.texture[y0 - top:y1 - top, x0 - left:x1 - left]
        region = frame[y0:y1, x0:x1]
        region += alpha * (tex - region)


def natural_frames(v: NaturalVideo):
    """Yield the video's frames as uint8 (height, width, 3) arrays, in order."""
    rng = np.random.default_rng(v.seed)
    margin = max(64, v.frames)                   # how far the camera may travel
    H, W = v.height + 2 * margin, v.width + 2 * margin
    scenes = [_scene(rng, H, W)]
    actors = [[_Actor(rng, v) for _ in range(int(rng.integers(3, 7)))]]
    if v.cut_at is not None:
        scenes.append(_scene(rng, H, W))
        actors.append([_Actor(rng, v) for _ in range(int(rng.integers(3, 7)))])
    # A smooth camera path (a few slow sinusoids) plus a jitter random walk, in whole pixels.
    t = np.arange(v.frames)
    path = np.zeros((v.frames, 2))
    for axis in range(2):
        for _ in range(3):
            period = rng.uniform(60, 400)
            path[:, axis] += rng.uniform(4, 0.3 * margin) * np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3))
    path += np.cumsum(rng.normal(0, 0.6, (v.frames, 2)), 0)
    path = np.clip(np.round(path), -margin + 1, margin - 1).astype(int)
    grain_bank = rng.normal(0, v.grain, (7, v.height, v.width, 3)).astype(np.float32)
    light = 1 + 0.06 * np.sin(2 * np.pi * t / rng.uniform(90, 300) + rng.uniform(0, 6.3))
    for k in range(v.frames):
        s = int(v.cut_at is not None and k >= v.cut_at)
        dy, dx = path[k]
        frame = scenes[s][margin + dy:margin + dy + v.height, margin + dx:margin + dx + v.width].copy()
        for a in actors[s]:
            a.paste(frame, k)
        frame *= light[k]
        # a bank of grain fields, shifted every frame: real per-frame noise at a fraction of the cost
        g = grain_bank[k % 7]
        frame += np.roll(g, (k * 37) % v.height, axis=0)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_natural_video(path: str, v: NaturalVideo = NaturalVideo(), codec: str = "h264",
                        gop: Optional[int] = None, options: Optional[dict] = None) -> str:
    """Encode `natural_frames(v)` to ``path`` (``.mp4`` for H.264, ``.webm`` for VP9).

    H.264: x264's defaults (``gop=None``: keyframe interval 250 and scene-cut keyframes) at crf
    23, or exactly every ``gop`` frames. VP9: crf 32, keyframes every ``gop`` (default 250).
    ``options`` are added to the encoder's. Written under a temporary name, then renamed."""
    import av
    encoder = {"h264": "libx264", "vp9": "libvpx-vp9"}[codec]
    opts = {"crf": "23"} if codec == "h264" else {"crf": "32", "b": "0", "deadline": "good",
                                                   "cpu-used": "4", "row-mt": "1"}
    if gop is not None and codec == "h264":
        opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    opts.update(options or {})
    tmp = f"{path}.partial"
    with av.open(tmp, "w", format="mp4" if codec == "h264" else "webm") as out:
        s = out.add_stream(encoder, rate=v.fps)
        s.width, s.height, s.pix_fmt = v.width, v.height, "yuv420p"
        # PyAV gives new streams a 1 Mb/s target: x264 and libvpx then rate-control to it
        # instead of the constant quality that a downloaded file was made with.
        s.codec_context.bit_rate = 0
        s.codec_context.thread_count = 1
        if gop is not None or codec == "vp9":
            s.codec_context.gop_size = gop or 250
        s.options = opts
        for frame in natural_frames(v):
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    os.replace(tmp, path)
    return path
