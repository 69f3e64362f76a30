"""Transcode one video to a form every decoder reads quickly (the unit of work of ``reencode``).

The output keeps what training indexes by, the frames, and changes how they are stored:

* codec: H.264 (libx264, ``.mp4``: NVDEC decodes it) or VP9 (libvpx-vp9, ``.webm``: DALI also
  decodes it on the CPU); pixel format 4:2:0 (``yuv420p``) whatever the source's chroma format,
  since NVDEC reads only 4:2:0 H.264;
* size: the short side becomes ``short_side`` with the aspect ratio kept and both sides even
  (4:2:0 needs even sizes); a smaller source keeps its size (rounded down to even) unless
  ``upscale``. Pixels are stored as in the source: sample aspect ratio and rotation tags are not
  applied, as decord, DALI and PyAV do not apply them either;
* a keyframe every ``gop`` frames exactly (no scene-cut keyframes, and the source's own keyframe
  positions are not carried over): a clip never needs more than ``gop - 1`` frames decoded
  before its first frame;
* the same frames: every decoded source frame is written once, in order, at constant frame rate
  (the source's average rate), so the frame count and the frame indices of the lists stay valid;
  a variable-rate source is re-timed, not re-sampled;
* audio, subtitles and data streams are dropped.

The output is written to a hidden temporary name in the destination folder and renamed at the
end: a file with the final name is always complete (a killed run leaves at most a ``.partial``
file, which the next run overwrites).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Optional, Tuple

import av

from ...errors import ConfigError
from ..index import probe_video

__all__ = ["CODECS", "PRESETS", "EncodeSettings", "TranscodeError", "output_size", "transcode",
           "partial_path"]

# codec name -> (FFmpeg encoder, container format, file extension)
CODECS = {"h264": ("libx264", "mp4", ".mp4"), "vp9": ("libvpx-vp9", "webm", ".webm")}
DEFAULT_CRF = {"h264": 23, "vp9": 32}
MAX_CRF = {"h264": 51, "vp9": 63}
# x264's preset names; libvpx-vp9 has no presets, so each name maps to a deadline and a cpu-used
# speed (libvpx clamps cpu-used to 5 under "good", so the fastest names switch to "realtime").
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
           "veryslow")
_VP9_SPEED = {"ultrafast": ("realtime", 8), "superfast": ("realtime", 7),
              "veryfast": ("realtime", 6), "faster": ("good", 5), "fast": ("good", 4),
              "medium": ("good", 3), "slow": ("good", 2), "slower": ("good", 1),
              "veryslow": ("good", 0)}


class TranscodeError(RuntimeError):
    """One video could not be transcoded; ``str(exc)`` is the reason for the failure report."""


@dataclass(frozen=True)
class EncodeSettings:
    """Everything that decides an output's content (the worker count does not)."""
    codec: str = "h264"
    short_side: int = 320
    upscale: bool = False
    gop: int = 16
    crf: Optional[int] = None       # None: DEFAULT_CRF of the codec
    preset: str = "fast"

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; use one of {', '.join(CODECS)}")
        if self.short_side <= 0 or self.short_side % 2:
            raise ConfigError(f"--short-side must be a positive even number of pixels (4:2:0 video "
                             f"needs even sizes), got {self.short_side}")
        if self.gop <= 0:
            raise ConfigError(f"--gop must be a positive number of frames, got {self.gop}")
        if self.crf is not None and not 0 <= self.crf <= MAX_CRF[self.codec]:
            raise ConfigError(f"--crf for {self.codec} must be in 0..{MAX_CRF[self.codec]}, "
                             f"got {self.crf}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")

    @property
    def ext(self) -> str:
        return CODECS[self.codec][2]

    @property
    def quality(self) -> int:
        return DEFAULT_CRF[self.codec] if self.crf is None else self.crf

    def as_dict(self) -> dict:
        d = asdict(self)
        d["crf"] = self.quality
        return d

    def encoder_options(self) -> dict:
        """FFmpeg options of the encoder: constant quality and a fixed keyframe interval."""
        if self.codec == "h264":
            return {"preset": self.preset, "crf": str(self.quality),
                    "x264-params": f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0"}
        deadline, speed = _VP9_SPEED[self.preset]
        # b=0 with crf: constant quality, no bitrate target. keyint_min = gop = kf_max_dist
        # leaves libvpx no room to place keyframes on scene cuts.
        return {"deadline": deadline, "cpu-used": str(speed), "crf": str(self.quality), "b": "0",
                "row-mt": "1", "keyint_min": str(self.gop)}


def _even(x: float) -> int:
    return max(2, 2 * int(round(x / 2)))


def output_size(width: int, height: int, short_side: int, upscale: bool = False) -> Tuple[int, int]:
    """``(width, height)`` of the output: short side ``short_side`` (aspect ratio kept, the long
    side rounded to the nearest even number); a source whose short side is already at most
    ``short_side`` keeps its size, rounded down to even, unless ``upscale``."""
    short = min(width, height)
    if short <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    if short > short_side or (upscale and short < short_side):
        scale = short_side / short
        if width <= height:
            return short_side, _even(height * scale)
        return _even(width * scale), short_side
    return max(2, width - width % 2), max(2, height - height % 2)


def partial_path(dst: str) -> str:
    """The temporary name an output is written under: hidden, in the destination folder (so the
    final rename is atomic), never mistaken for a finished output."""
    folder, name = os.path.split(dst)
    return os.path.join(folder, f".{name}.partial")


def _frame_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise TranscodeError("unknown frame rate (the container states none)")
    return Fraction(rate).limit_denominator(1001 * 1000)


def _copy_colour_tags(frame, ctx) -> None:
    # The YUV -> YUV resize keeps the colour matrix; keep its description so that decoders
    # convert to RGB as they did for the source (2 = unspecified in FFmpeg's enums).
    for name in ("colorspace", "color_primaries", "color_trc"):
        value = getattr(frame, name, None)
        if value not in (None, 2) and hasattr(ctx, name):
            try:
                setattr(ctx, name, value)
            except (ValueError, TypeError, AttributeError):
                pass


def _encode(src: str, tmp: str, settings: EncodeSettings, threads: int) -> dict:
    encoder, fmt, _ = CODECS[settings.codec]
    n = n_packets = 0
    size = None
    with av.open(src) as inp:
        stream = inp.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        rate = _frame_rate(stream)
        out, ostream = None, None
        try:
            for frame in inp.decode(stream):
                if out is None:      # opened at the first frame: its size is the truth
                    size = output_size(frame.width, frame.height, settings.short_side,
                                       settings.upscale)
                    src_size = (frame.width, frame.height)
                    out = av.open(tmp, "w", format=fmt)
                    ostream = out.add_stream(encoder, rate=rate)
                    ostream.width, ostream.height = size
                    ostream.pix_fmt = "yuv420p"
                    ostream.codec_context.gop_size = settings.gop
                    ostream.codec_context.thread_count = threads
                    ostream.options = settings.encoder_options()
                    _copy_colour_tags(frame, ostream.codec_context)
                    shrink = size[0] * size[1] <= frame.width * frame.height
                    interp = "AREA" if shrink else "BICUBIC"
                f = frame.reformat(width=size[0], height=size[1], format="yuv420p",
                                   interpolation=interp)
                # A decoded frame carries its source picture type, and libx264/libvpx turn an
                # "I" into a forced keyframe: clear it so that only the fixed GOP decides.
                f.pict_type = av.video.frame.PictureType.NONE
                f.pts, f.time_base = n, 1 / rate
                n += 1
                for packet in ostream.encode(f):
                    out.mux(packet)
                    n_packets += 1
            if out is None:
                raise TranscodeError("no decodable frame")
            for packet in ostream.encode():
                out.mux(packet)
                n_packets += 1
        finally:
            if out is not None:
                out.close()
    if n_packets != n:
        raise TranscodeError(f"the encoder wrote {n_packets} packets for {n} frames")
    return dict(frames=n, fps=float(rate), width=size[0], height=size[1],
                src_width=src_size[0], src_height=src_size[1])


def transcode(src: str, dst: str, settings: EncodeSettings, threads: int = 1) -> dict:
    """Transcode ``src`` to ``dst`` (see the module docstring); returns ``frames, fps, width,
    height, src_width, src_height, seconds``. Raises :class:`TranscodeError` with the reason
    (missing, corrupt, no video stream, no frames, truncated, encoder error); ``dst`` then does
    not exist and no temporary file is left behind."""
    t0 = time.perf_counter()
    if os.path.isdir(src):
        raise TranscodeError("a frame folder (raw frames are not supported by the re-encoder)")
    probe = probe_video(src)          # the index's reasons: missing, corrupt, truncated, ...
    if not probe["readable"]:
        raise TranscodeError(probe["reason"] or "unreadable")
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = partial_path(dst)
    try:
        info = _encode(src, tmp, settings, max(1, int(threads)))
        with open(tmp, "rb") as f:    # on disk before the name says "complete"
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except TranscodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise TranscodeError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    info["seconds"] = time.perf_counter() - t0
    return info
