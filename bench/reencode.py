"""Re-encoder speed, and what it buys: random access to a clip in the middle of a video.

    python bench/reencode.py [--workers 2] [--repeats 15]

1. Encode speed (frames/s, files/s) of ``python -m vmae2_fast.data.tools.reencode`` with its defaults
   (short side 320, GOP 16), for H.264 and VP9, on the embedded dataset
   (``ensure_synthetic_dataset()``'s pre-training list: 384 VP9 videos of 48 frames, 80x80, kept
   at that size) and on copies of a 10 s 640x360 30 fps H.264 clip (made here, keyframes every
   250 frames).
2. PyAV decode time of one 16 x 4 pre-training clip (16 frames, stride 4) from the middle of that
   clip, before and after re-encoding: decoding from the first frame (what
   ``video_io.decode_frames`` does) and seeking to the keyframe before the clip first.

The clip is synthetic (smooth moving waves, a moving block, light noise): real footage costs
the encoder more per frame. Writes bench/results/reencode-<machine>.jsonl (one record per row,
written when it is measured) and .md (render.py).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

import harness
from harness import Records, add_out_flag, environment, result_stem, time_in_rounds

from vmae2_fast.data import ensure_synthetic_dataset
from vmae2_fast.data.tools.reencode import reencode_list
from vmae2_fast.data.tools.transcode import EncodeSettings

W, H, FPS, SECONDS = 640, 360, 30, 10
CLIP_FRAMES, CLIP_STRIDE = 16, 4


def make_clip(path: Path, gop: int = 250) -> None:
    """A 10 s 640x360 H.264 clip with a long GOP: x264 medium, crf 20, keyframes only every
    ``gop`` frames (250 is x264's default interval; scene cuts off, so the keyframes are known)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"preset": "medium", "crf": "20", "x264-params": f"keyint={gop}:scenecut=0"}
        for t in range(FPS * SECONDS):
            f = np.stack([128 + 80 * np.sin(2 * np.pi * (x / 190 + t / 45)),
                          128 + 80 * np.cos(2 * np.pi * (y / 130 - t / 70)),
                          128 + 60 * np.sin(2 * np.pi * (x + y) / 300)], -1)
            x0 = (40 + 3 * t) % (W - 120)
            f[100:220, x0:x0 + 120] = (230, 220, 50)
            f += rng.normal(0, 3, f.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(f, 0, 255).astype(np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def clip_indices(n: int) -> list:
    start = (n - CLIP_FRAMES * CLIP_STRIDE) // 2
    return list(range(start, start + CLIP_FRAMES * CLIP_STRIDE, CLIP_STRIDE))


def decode_clip(path: str, indices: list, seek: bool) -> int:
    """Decode ``indices`` to RGB; returns the frames decoded. ``seek``: jump to the keyframe at or
    before the first index (by timestamp) instead of decoding from the start."""
    wanted, last, decoded = set(indices), max(indices), 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        tb, rate = s.time_base, s.average_rate
        if seek:
            c.seek(int(min(indices) / rate / tb) + (s.start_time or 0), stream=s, backward=True)
        for f in c.decode(s):
            decoded += 1
            i = round(float((f.pts - (s.start_time or 0)) * tb * rate))
            if i in wanted:
                f.to_ndarray(format="rgb24")
            if i >= last:
                break
    return decoded


def timed_reencode(lst: Path, root: Path, out: Path, codec: str, workers: int) -> dict:
    t0 = time.perf_counter()
    res = reencode_list(str(lst), str(root), str(out), EncodeSettings(codec=codec),
                        workers=workers, index=False, progress=False)
    wall = time.perf_counter() - t0
    assert not res.failed, res.failed
    return dict(codec=codec, videos=res.encoded, frames=res.frames, seconds=round(wall, 2),
                frames_per_s=round(res.frames / wall, 1), files_per_s=round(res.encoded / wall, 2),
                bytes=sum(p.stat().st_size for p in out.rglob("*") if p.suffix in (".mp4", ".webm")))


def run(a):
    env = environment(torch.device("cpu"))
    idx = clip_indices(FPS * SECONDS)
    header = {**env, "workers": a.workers, "repeats": a.repeats,
              "clip": dict(size=f"{W}x{H}", fps=FPS, seconds=SECONDS, indices=idx),
              "versions": dict(av=av.__version__, ffmpeg=av.library_versions.get("libavcodec"))}
    work = Path(tempfile.mkdtemp(prefix="bench-reencode-"))
    try:
        with Records(result_stem(a.out, "reencode", env["machine"]), "reencode", header) as records:
            ds = ensure_synthetic_dataset()
            clips = work / "clips"
            clips.mkdir()
            make_clip(clips / "clip_0.mp4")
            for k in range(1, a.copies):
                shutil.copy(clips / "clip_0.mp4", clips / f"clip_{k}.mp4")
            (work / "clips.txt").write_text("".join(f"clip_{k}.mp4 0 -1\n" for k in range(a.copies)))

            n = 0
            for codec in ("h264", "vp9"):
                for name, lst, root in (("embedded dataset 80x80", Path(ds.pretrain_list), Path(ds.root)),
                                        (f"{W}x{H} clip -> 568x320", work / "clips.txt", clips)):
                    row = timed_reencode(lst, root, work / f"out-{codec}-{n}", codec, a.workers)
                    records.add(dict(kind="encode", input=name, **row))
                    n += 1

            # Same size, GOP 16 (isolates the GOP), and the default 320 outputs.
            full = work / "gop16-full"
            reencode_list(str(work / "clips.txt"), str(clips), str(full),
                          EncodeSettings(short_side=H), workers=1, index=False, progress=False)
            variants = [("source H.264 640x360, GOP 250", str(clips / "clip_0.mp4")),
                        ("re-encoded H.264 640x360, GOP 16", str(full / "clip_0.mp4")),
                        ("re-encoded H.264 568x320, GOP 16", str(work / "out-h264-1" / "clip_0.mp4")),
                        ("re-encoded VP9 568x320, GOP 16", str(work / "out-vp9-3" / "clip_0.webm"))]
            calls = {(v, seek): (lambda path=path, seek=seek: decode_clip(path, idx, seek))
                     for v, path in variants for seek in (False, True)}
            # in rounds: the machine's noise hits every row
            timed = time_in_rounds(calls, a.repeats, 0, torch.device("cpu"))
            for (v, seek), t in timed.items():
                records.add(dict(kind="decode", video=v, seek=seek, frames_decoded=t.result,
                                 ms_per_clip=round(1000 * statistics.median(t.seconds), 1)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return records.path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--copies", type=int, default=4, help="copies of the 640x360 clip to encode")
    ap.add_argument("--repeats", type=int, default=15, help="timed decodes per row (median)")
    add_out_flag(ap)
    return harness.main(ap, run, argv)


if __name__ == "__main__":
    sys.exit(main())
