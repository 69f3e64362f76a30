"""Video decoding on the CPU with PyAV (FFmpeg): only the frames a clip needs, frame-accurate.

This is the CPU path of the data plane (the fast path decodes on the GPU with DALI). The official
code uses decord at native resolution; we decode the same frames with FFmpeg through PyAV and
convert them to RGB with swscale. Every failure (missing file, not a video, corrupt stream, too
few frames) is raised as :class:`VideoDecodeError` naming the file, so the dataset can skip the
video with one ``except`` clause.

Frame ``i`` is the ``i``-th frame a plain decode of the whole stream outputs (presentation order).
`decode_frames` gets there without decoding the frames before the clip:

1. demux the stream (packets only, no decoding: about 1 ms for a 10 s clip) and rank the
   packets' timestamps: packet ``p`` holds frame ``rank(p.pts)``; the keyframes are where
   decoding may start;
2. for the first wanted frame, start the decoder at the last keyframe at or before it and decode
   forward; when the next wanted frame lies past a keyframe the decoder has not reached, restart
   there (a fresh decoder, the stretch in between never decoded);
3. on the way, an unwanted frame that no other frame is predicted from is dropped undecoded
   (FFmpeg's ``skip_frame=NONREF``, for the codecs of `SKIPS_NONREF`): in H.264 with x264's
   B-pyramid about half the frames, so a 16 x 4 clip decodes about 40 % fewer frames;
4. check what comes out: from a keyframe on, the decoder must output frames ``k, k+1, ...`` in
   order, each with a timestamp of the table, missing only frames dropped in step 3. A frame
   before ``k`` (a leading picture of an open GOP, decoded without its references) is ignored;
   anything else (a wanted frame that never comes out, an unknown timestamp, a gap the drops do
   not explain) makes the clip be decoded from frame 0, counting frames as a plain decode does.
   Streams without usable timestamps (a raw ``.h264`` file) are decoded that way too.

The frame numbers rest on one assumption, which decord, torchcodec's "exact" mode and our index
(`data.index`, which counts packets) share: every packet with a timestamp is one frame of a plain
decode. Step 4 catches a packet that breaks it where its frame was to be decoded; not before
the decoded stretch, nor one whose frame step 3 would drop.

Why demux rather than ``container.seek``: a demuxer's seek lands where its index says (MP4 by
decode timestamp, WebM by cues, some formats approximately), while the demuxed packets say
exactly which packet is which frame. They stay in memory for the one call (the file's size).
"""
from __future__ import annotations

import bisect
import io
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from ..media import EncodedVideo, VideoDecodeError

__all__ = ["count_frames", "decode_frames", "open_video", "iter_frames", "DecodeStats"]


def _av():
    """PyAV, imported at the first decode: the package (and the GPU tests that read no video)
    must import on a machine without PyAV, such as the GPU machines `bench/gpu_suite.sh` runs on."""
    import av
    return av


def open_video(path: str, threads: int):
    """Open ``path`` (a file, or an `EncodedVideo` in memory) and return ``(container,
    video_stream)``; raise VideoDecodeError on failure."""
    av = _av()
    if isinstance(path, EncodedVideo):
        source = io.BytesIO(path.data)
    else:
        source = path = os.fspath(path)
        if not os.path.exists(path):
            raise VideoDecodeError(f"video file not found: {path}")
        if os.path.isdir(path):
            raise VideoDecodeError(f"{path} is a directory, not a video file (frame folders are read "
                                   "by data.pyav.frames)")
    try:
        container = av.open(source)
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


@dataclass
class DecodeStats:
    """What one `decode_frames` call cost: ``decoded`` frames decoded, ``skipped`` packets the
    decoder dropped undecoded (unwanted non-reference frames), ``starts`` decoder (re)starts at
    a keyframe, ``from_start``: whether the clip was decoded ordinally from frame 0 (timestamps
    that do not rank, or the check of step 4)."""
    decoded: int = 0
    skipped: int = 0
    starts: int = 0
    from_start: bool = False


# Decoders whose "non-reference" frames are never used to predict another frame, so that the
# decoder may drop them unread (FFmpeg's skip_frame=NONREF): H.264 (nal_ref_idc 0), MPEG-1/2/4
# B-frames, VP8/VP9 frames that refresh no reference. Not HEVC: its sub-layer non-reference
# pictures may still be referenced from a higher temporal layer.
SKIPS_NONREF = frozenset({"h264", "mpeg1video", "mpeg2video", "mpeg4", "vp8", "vp9"})


class _Stream:
    """A video's packets in decode order, with the frame each one holds."""

    def __init__(self, packets: list):
        self.packets = packets
        # The frame a packet holds is the rank of its timestamp. Packets flagged "discard" (an
        # MP4 edit list cutting the start) are decoded, as references, but hold no frame.
        shown = [p.pts for p in packets if not p.is_discard]
        self.ranked = None
        if shown and None not in shown and len(set(shown)) == len(shown):
            self.frame_of_pts = {pts: i for i, pts in enumerate(sorted(shown))}
            self.frame_of_packet = [None if p.is_discard else self.frame_of_pts[p.pts] for p in packets]
            # (frame, decode position) of each keyframe, by frame
            keys = sorted((self.frame_of_pts[p.pts], j) for j, p in enumerate(packets)
                          if p.is_keyframe and not p.is_discard)
            self.key_frames = [k for k, _ in keys]
            self.key_positions = [j for _, j in keys]
            self.ranked = len(shown)

    def start_for(self, frame: int) -> Optional[tuple]:
        """(keyframe, its decode position) of the last keyframe at or before ``frame``."""
        k = bisect.bisect_right(self.key_frames, frame) - 1
        return None if k < 0 else (self.key_frames[k], self.key_positions[k])


class _FromStart(Exception):
    """The seeking decode cannot vouch for its frame numbers: decode the clip from frame 0."""


def _demux(container, stream, path: str) -> _Stream:
    av = _av()
    try:
        return _Stream([p for p in container.demux(stream) if p.size])
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(f"corrupt video {path}: {exc}") from exc


def _rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _decode_seeking(ctx, s: _Stream, wanted: list, stats: DecodeStats) -> dict:
    """{frame: RGB array} for ``wanted`` (sorted, distinct), decoding from keyframes; unwanted
    non-reference frames are dropped undecoded where the codec allows it (`SKIPS_NONREF`)."""
    packets, out, keep = s.packets, {}, set(wanted)
    fed = expect = -1               # next packet to send; the frame the decoder must output next
    drained = False
    may_skip = ctx.name in SKIPS_NONREF
    skippable = set()               # frames sent with skip_frame=NONREF: absent if non-reference
    try:
        for w in wanted:
            if w in out:
                continue
            start = s.start_for(w)
            if start is None:
                raise _FromStart
            key, pos = start
            if pos > fed:           # a keyframe not reached yet: start there, skip what lies between
                if fed >= 0:
                    ctx.flush_buffers()
                fed, expect, drained = pos, key, False
                stats.starts += 1
            while w not in out:
                if fed < len(packets):
                    if may_skip:
                        frame = s.frame_of_packet[fed]
                        skip = frame is not None and frame not in keep
                        if skip:
                            skippable.add(frame)
                        if skip != (ctx.skip_frame == "NONREF"):
                            ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                    frames = ctx.decode(packets[fed])
                    fed += 1
                    stats.decoded += 1
                elif not drained:
                    frames, drained = ctx.decode(None), True  # the decoder's delayed frames
                else:
                    raise _FromStart                          # ``w`` never came out
                for f in frames:
                    i = s.frame_of_pts.get(f.pts)
                    if i is None:
                        raise _FromStart
                    if i < expect:                            # leading picture of an open GOP
                        continue
                    if i != expect:                           # only dropped frames may be missing
                        if not skippable.issuperset(range(expect, i)):
                            raise _FromStart
                        stats.skipped += i - expect
                        stats.decoded -= i - expect
                    expect = i + 1
                    if i in keep:
                        out[i] = _rgb(f)
    finally:
        if may_skip:
            ctx.skip_frame = "DEFAULT"
    return out


def _decode_ordinal(ctx, packets: list, last: int, wanted: set, stats: DecodeStats) -> tuple:
    """({frame: RGB array}, frames output) counting every output frame from the first packet
    on: the definition of frame ``i``, at the cost of decoding everything before the clip."""
    out, i = {}, 0
    for packet in packets + [None]:
        stats.decoded += packet is not None
        for f in ctx.decode(packet):
            if i in wanted:
                out[i] = _rgb(f)
            i += 1
            if i > last:
                return out, i
    return out, i


def decode_frames(path: str, indices: Sequence[int], *, threads: int = 1,
                  stats: Optional[DecodeStats] = None) -> np.ndarray:
    """Decode the frames ``indices`` (0-based, any order, repeats allowed) of ``path``.

    Returns uint8 RGB frames of shape ``(len(indices), H, W, 3)`` in the order of ``indices``;
    each distinct frame is decoded and converted to RGB once. Only the stretches from the
    keyframe before each run of wanted frames are decoded (see the module docstring); ``stats``,
    if given, receives what the call decoded.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("decode_frames needs at least one frame index")
    if idx.min() < 0:
        raise ValueError(f"negative frame index in {idx.tolist()}")
    stats = DecodeStats() if stats is None else stats
    wanted = sorted(set(idx.tolist()))
    last = wanted[-1]
    av = _av()

    container, stream = open_video(path, threads)
    try:
        s = _demux(container, stream, path)
        ctx = stream.codec_context
        rgb, n_seen = None, 0
        try:
            if s.ranked is not None and last < s.ranked:
                try:
                    rgb = _decode_seeking(ctx, s, wanted, stats)
                except _FromStart:
                    ctx.flush_buffers()
                    stats.from_start = True
            if rgb is None:         # no usable ranking, or too few packets: count what decodes
                stats.from_start = True
                rgb, n_seen = _decode_ordinal(ctx, s.packets, last, set(wanted), stats)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoDecodeError(f"corrupt video {path}: {exc}") from exc
    finally:
        container.close()

    if last not in rgb:
        raise VideoDecodeError(
            f"video too short: {path} has {n_seen} decodable frames, frame {last} was requested")
    first = rgb[int(idx[0])]
    out = np.empty((idx.size,) + first.shape, dtype=np.uint8)
    for k, i in enumerate(idx.tolist()):
        out[k] = rgb[i]
    return out
