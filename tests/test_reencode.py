"""The dataset re-encoder: outputs read back with PyAV (and DALI for VP9), failures, resume, CLI.

Sources are made here with PyAV: H.264 at odd sizes and GOPs (long, short, 4:2:2, 4:4:4), an
MPEG-4 Part 2 AVI, an H.264 file with an audio track. Every output is checked against facts of
its source computed independently: the frames decoded by PyAV and resized by torch.
"""
import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest

import needs
import torch
import torch.nn.functional as F

from vmae2_fast.data.tools import reencode as reencode_mod
from vmae2_fast.data.index import load_index
from vmae2_fast.data.tools.reencode import main, reencode_list
from vmae2_fast.data.tools.transcode import EncodeSettings, output_size, partial_path

N_FRAMES, FPS, GOP = 40, 25, 16      # 40 frames: keyframes at 0, 16, 32 and a partial last GOP


def pattern(n, w, h, cut=23):
    """Smooth moving waves, a ramp that is dark at the top left and a moving block: any flip,
    crop or wrong scale of it moves a lot of pixels. A scene cut at frame ``cut`` (colours
    inverted) tempts encoders to put a keyframe there."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for t in range(n):
        f = np.stack([128 + 90 * np.sin(2 * np.pi * (x / w * 1.3 + t / 40)),
                      128 + 90 * np.cos(2 * np.pi * (y / h * 0.9 - t / 30)),
                      255 * (x / w) * (y / h)], -1)
        x0 = int(w * 0.1) + t
        f[int(h * 0.15):int(h * 0.45), x0:x0 + w // 6] = (240, 240, 40)
        out.append(f if t < cut else 255 - f[::-1])
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_source(path, w, h, encoder="libx264", fmt="mp4", pix_fmt="yuv420p", gop=250,
                 audio=False, n=N_FRAMES):
    frames = pattern(n, w, h)
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(encoder, rate=FPS)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.codec_context.gop_size = gop
        s.options = {"crf": "12", "preset": "ultrafast"} if encoder == "libx264" else {}
        s.bit_rate = 4_000_000
        a = c.add_stream("aac", rate=16000) if audio else None
        for i, fr in enumerate(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
            if a is not None:
                af = av.AudioFrame.from_ndarray(np.zeros((1, 640), np.float32), format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts = 16000, i * 640
                for p in a.encode(af):
                    c.mux(p)
        for st in [s] + ([a] if a is not None else []):
            for p in st.encode():
                c.mux(p)
    return str(path)


# name -> (source size, writer kwargs, output size with --short-side 64, worked out by hand)
SOURCES = {
    "landscape_longgop_audio.mp4": ((200, 120), dict(gop=250, audio=True), (106, 64)),
    "portrait_gop7.mp4": ((120, 200), dict(gop=7), (64, 106)),
    "chroma422.mp4": ((160, 96), dict(pix_fmt="yuv422p"), (106, 64)),
    "divx.avi": ((200, 120), dict(encoder="mpeg4", fmt="avi"), (106, 64)),
    "small_odd444.mp4": ((75, 51), dict(pix_fmt="yuv444p"), (74, 50)),   # kept: no upscale
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("reencode_src")
    (root / "sub").mkdir()
    for name, ((w, h), kw, _) in SOURCES.items():
        write_source(root / "sub" / name, w, h, **kw)
    lst = root / "list.txt"
    lst.write_text("".join(f"sub/{name} {i} -1\n" for i, name in enumerate(SOURCES)))
    return root, str(lst)


def read_back(path):
    """Facts of a file read with PyAV: stream kinds, codec, format, size, rate, the frame index
    of every keyframe packet, and the RGB frames."""
    with av.open(path) as c:
        s = c.streams.video[0]
        kinds = [st.type for st in c.streams]
        rate = s.average_rate
        keys = sorted(round(float(p.pts * p.time_base * rate)) for p in c.demux(s)
                      if p.size and p.is_keyframe)
        c.seek(0)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
        return dict(kinds=kinds, codec=s.codec_context.name, pix_fmt=s.codec_context.pix_fmt,
                    size=(s.codec_context.width, s.codec_context.height), rate=rate, keys=keys,
                    frames=frames)


def resized(frames, w, h):
    """The source frames at (w, h) by torch's antialiased bilinear resize, independent of FFmpeg."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def h264_run(sources, tmp_path_factory):
    root, lst = sources
    out = tmp_path_factory.mktemp("reencode_h264")
    res = reencode_list(lst, str(root), str(out), EncodeSettings(short_side=64, crf=12), workers=1,
                        progress=False)
    return root, out, res


def test_output_size_rule():
    assert output_size(1920, 1080, 320) == (568, 320)          # 568.9 -> nearest even
    assert output_size(200, 120, 64) == (106, 64)
    assert output_size(120, 200, 64) == (64, 106)
    assert output_size(75, 51, 64) == (74, 50)                 # smaller: kept, rounded down even
    assert output_size(75, 51, 64, upscale=True) == (94, 64)   # 75 * 64 / 51 = 94.1
    assert output_size(640, 360, 360) == (640, 360)


@pytest.mark.parametrize("name", list(SOURCES))
def test_h264_outputs_read_back(h264_run, name):
    root, out, res = h264_run
    assert res.failed == [] and res.encoded == len(SOURCES)
    src, dst = read_back(str(root / "sub" / name)), read_back(str(out / "sub" / name.rsplit(".")[0]) + ".mp4")
    w, h = SOURCES[name][2]
    assert dst["kinds"] == ["video"]                          # audio dropped
    assert (dst["codec"], dst["pix_fmt"], dst["size"]) == ("h264", "yuv420p", (w, h))
    assert dst["keys"] == list(range(0, N_FRAMES, GOP))       # fixed GOP, source GOP not copied
    assert len(dst["frames"]) == len(src["frames"]) == N_FRAMES
    assert dst["rate"] == src["rate"] == Fraction(FPS)
    ref = resized(src["frames"], w, h)
    mae = np.abs(dst["frames"] - ref).mean()
    # the bound sees a wrong geometry: a mirror image, or a 5% crop before the resize
    flipped = np.abs(dst["frames"] - ref[:, :, ::-1]).mean()
    sw = src["frames"].shape[2]
    cropped = np.abs(dst["frames"] - resized(src["frames"][:, :, sw // 20:], w, h)).mean()
    assert mae < 4.0, mae
    assert flipped > 4 * mae and cropped > 1.8 * mae, (mae, flipped, cropped)


def test_new_list_and_index(h264_run):
    root, out, res = h264_run
    lines = (out / "list.txt").read_text().splitlines()
    # same format: path start total; start kept, total = frames written, new extension
    assert lines == [f"sub/{n.rsplit('.')[0]}.mp4 {i} {N_FRAMES}" for i, n in enumerate(SOURCES)]
    idx = load_index(str(out / "list.txt"), str(out))
    assert [(v.codec, v.frames, v.width, v.height) for v in idx.videos] == \
        [("h264", N_FRAMES) + s[2] for s in SOURCES.values()]
    assert (out / "list.txt.failed.jsonl").read_text() == ""


def test_vp9_output_and_dali_cpu_decode(sources, tmp_path):
    root, _ = sources
    lst = tmp_path / "vp9.txt"
    lst.write_text("sub/chroma422.mp4 3\nsub/divx.avi 5\n")       # path label
    out = tmp_path / "out"
    res = reencode_list(str(lst), str(root), str(out), EncodeSettings(codec="vp9", short_side=64),
                        workers=1, progress=False)
    assert (out / "vp9.txt").read_text() == "sub/chroma422.webm 3\nsub/divx.webm 5\n"
    assert len(res.index.videos) == 2
    path = str(out / "sub" / "chroma422.webm")
    dst = read_back(path)
    assert dst["kinds"] == ["video"]
    assert (dst["codec"], dst["pix_fmt"], dst["size"]) == ("vp9", "yuv420p", (106, 64))
    assert dst["keys"] == list(range(0, N_FRAMES, GOP)) and len(dst["frames"]) == N_FRAMES
    assert dst["rate"] == Fraction(FPS)
    src = read_back(str(root / "sub" / "chroma422.mp4"))
    assert np.abs(dst["frames"] - resized(src["frames"], 106, 64)).mean() < 4.0

    needs.dali()                 # not installed: skip locally, fail on CI
    want = np.array([0, 17, 31, 39])   # across GOPs: DALI seeks to keyframes
    dali = dali_decode(path, want, "cpu")
    assert dali.shape == (4, 64, 106, 3)
    # same frames up to the decoders' chroma upsampling (DALI bilinear, PyAV nearest)
    assert np.abs(dali - dst["frames"][want]).mean() < 3.0
    assert np.abs(dali - dst["frames"][want[::-1]]).mean() > 6.0   # and not other frames


def dali_decode(path, frames, device):
    """Frames ``frames`` of ``path`` decoded by DALI (``cpu`` or ``mixed``), float32 RGB."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if device == "mixed" else None)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        return fn.decoders.video(enc, device=device, frames=[int(i) for i in frames])
    p = pipe()
    p.build()
    p.feed_input("enc", [np.fromfile(path, np.uint8)])
    (out,) = p.run()
    if device == "mixed":
        out = out.as_cpu()
    return np.asarray(out[0]).astype(np.float32)


@pytest.mark.gpu
def test_h264_output_decodes_on_nvdec(h264_run):
    """The point of H.264 outputs: NVDEC reads them, including those made from 4:2:2 sources
    and MPEG-4 Part 2 AVIs, which it cannot read as they were."""
    needs.dali()
    _, out, _ = h264_run
    want = np.array([1, 16, 30, 39])
    for name in ("chroma422.mp4", "divx.mp4"):
        path = str(out / "sub" / name)
        ref = read_back(path)["frames"][want]
        got = dali_decode(path, want, "mixed")
        assert got.shape == ref.shape
        assert np.abs(got - ref).mean() < 3.0


def test_failures_are_reported_and_left_out(sources, tmp_path, capsys):
    """A corrupt file, a missing file and a file without video: the run finishes (in two worker
    processes), reports each with its reason, and the new list, in the input's CSV format with
    its extra column, holds the others."""
    root, _ = sources
    data = tmp_path / "data"
    data.mkdir()
    for name in ("portrait_gop7.mp4", "divx.avi"):
        os.link(root / "sub" / name, data / name)
    (data / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    with av.open(str(data / "audio_only.m4a"), "w", format="mp4") as c:
        a = c.add_stream("aac", rate=16000)
        for i in range(20):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts = 16000, i * 1024
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    lst = data / "train.csv"
    lst.write_text("video,label,frames,note\nportrait_gop7.mp4,2,-1,a\ncorrupt.mp4,0,-1,b\n"
                   "gone.mp4,1,-1,c\naudio_only.m4a,4,-1,d\ndivx.avi,3,40,\"e, f\"\n")
    out = tmp_path / "out"
    rc = main([str(lst), "--data-root", str(data), "--out-root", str(out), "--short-side", "64",
               "--workers", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "re-encoded 2 videos" in printed and "3 failed" in printed
    for rel in ("corrupt.mp4", "gone.mp4", "audio_only.m4a"):
        assert f"failed: {rel}: " in printed
    failed = {x["rel"]: x["reason"] for x in map(json.loads, open(out / "train.csv.failed.jsonl"))}
    assert failed["gone.mp4"] == "missing"
    assert failed["corrupt.mp4"].startswith("corrupt")
    assert failed["audio_only.m4a"] == "no video stream"
    assert (out / "train.csv").read_text() == ("video,label,frames,note\n"
                                               "portrait_gop7.mp4,2,40,a\n"
                                               "divx.mp4,3,40,\"e, f\"\n")
    idx = load_index(str(out / "train.csv"), str(out))
    assert [(v.rel, v.label, v.frames) for v in idx.videos] == [("portrait_gop7.mp4", 2, 40),
                                                                ("divx.mp4", 3, 40)]
    assert sorted(os.listdir(out)) == [".vmae2_reencode.json", "divx.mp4", "portrait_gop7.mp4",
                                       "train.csv", "train.csv.failed.jsonl",
                                       "train.csv.index.json"]   # no partial files left


def test_resume_redoes_nothing_and_replaces_leftovers(sources, tmp_path, monkeypatch):
    root, _ = sources
    lst = tmp_path / "pre.txt"
    names = ["landscape_longgop_audio", "portrait_gop7", "small_odd444"]
    lst.write_text("".join(f"sub/{n}.mp4 0 -1 x\n" for n in names))
    out = tmp_path / "out"
    args = (str(lst), str(root), str(out), EncodeSettings(short_side=64))
    calls = []
    real = reencode_mod.transcode
    monkeypatch.setattr(reencode_mod, "transcode", lambda *a, **k: calls.append(a[0]) or real(*a, **k))

    first = reencode_list(*args, workers=1, progress=False)
    assert (first.encoded, first.reused, len(calls)) == (3, 0, 3)
    listed = (out / "pre.txt").read_text()
    assert listed == "".join(f"sub/{n}.mp4 0 {N_FRAMES} x\n" for n in names)
    outs = [out / "sub" / f"{n}.mp4" for n in names]
    mtimes = [p.stat().st_mtime_ns for p in outs]

    calls.clear()
    again = reencode_list(*args, workers=1, progress=False)
    assert (again.encoded, again.reused, calls) == (0, 3, [])
    assert [p.stat().st_mtime_ns for p in outs] == mtimes
    assert (out / "pre.txt").read_text() == listed

    # A killed run: one output never got its final name, its partial file is left over.
    outs[1].unlink()
    leftover = partial_path(str(outs[1]))
    open(leftover, "wb").write(b"half a video")
    third = reencode_list(*args, workers=1, progress=False)
    assert (third.encoded, third.reused) == (1, 2)
    assert calls == [str(root / "sub" / "portrait_gop7.mp4")]
    assert not os.path.exists(leftover)
    assert read_back(str(outs[1]))["keys"] == list(range(0, N_FRAMES, GOP))
    assert load_index(str(out / "pre.txt"), str(out)).videos[1].frames == N_FRAMES

    # A final name that no longer opens (damaged later, by someone else): redone as well.
    calls.clear()
    outs[2].write_bytes(b"not a video any more")
    fourth = reencode_list(*args, workers=1, progress=False)
    assert (fourth.encoded, fourth.reused, calls) == (1, 2, [str(root / "sub" / "small_odd444.mp4")])
    assert read_back(str(outs[2]))["size"] == (74, 50)

    # Other settings would mix two kinds of output in one root: refused.
    with pytest.raises(ValueError, match="other settings: gop 16 .now 8."):
        reencode_list(str(lst), str(root), str(out), EncodeSettings(short_side=64, gop=8),
                      workers=1, progress=False)


def test_a_failed_encode_leaves_no_file(sources, tmp_path, monkeypatch):
    """An encoder error midway: the video is reported, nothing takes its final name, and the
    partial file is removed."""
    from vmae2_fast.data.tools import transcode as transcode_mod
    root, _ = sources
    real = transcode_mod._encode

    def broken(src, tmp, settings, threads):
        real(src, tmp, settings, threads)
        raise OSError("No space left on device")
    monkeypatch.setattr(transcode_mod, "_encode", broken)
    lst = tmp_path / "l.txt"
    lst.write_text("sub/portrait_gop7.mp4 1\nsub/divx.avi 2\n")
    with pytest.raises(ValueError, match="none of the 2 videos"):
        reencode_list(str(lst), str(root), str(tmp_path / "o"), workers=1, progress=False)
    failed = [json.loads(x) for x in open(tmp_path / "o" / "l.txt.failed.jsonl")]
    assert [x["reason"] for x in failed] == ["OSError: No space left on device"] * 2
    assert os.listdir(tmp_path / "o" / "sub") == []


def _cli(capsys, *argv):
    rc = main([*map(str, argv), "--no-progress"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--codec", "av1"], "unknown codec 'av1'"),
    (["--short-side", "0"], "--short-side must be a positive even"),
    (["--short-side", "-320"], "--short-side must be a positive even"),
    (["--short-side", "225"], "--short-side must be a positive even"),
    (["--gop", "0"], "--gop must be a positive"),
    (["--crf", "70"], "--crf for h264 must be in 0..51"),
    (["--preset", "quick"], "unknown preset 'quick'"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--kind", "rawframes"], "frame-folder lists"),
])
def test_cli_refuses_bad_settings(sources, tmp_path, capsys, flags, message):
    root, lst = sources
    rc, err = _cli(capsys, lst, "--data-root", root, "--out-root", tmp_path / "o", *flags)
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "o").exists()        # refused before anything was written


def test_cli_refuses_bad_paths(sources, tmp_path, capsys):
    root, lst = sources
    rc, err = _cli(capsys, tmp_path / "nope.txt", "--data-root", root, "--out-root", tmp_path / "o")
    assert rc == 2 and "error: annotation list not found" in err
    rc, err = _cli(capsys, lst, "--data-root", root, "--out-root", root)
    assert rc == 2 and "error: --out-root is the data root" in err
    # inside the data root, where an output would land on a listed input
    clash = tmp_path / "clash.txt"
    clash.write_text("sub/landscape_longgop_audio.mp4 0 -1\nsub/sub/landscape_longgop_audio.mp4 0 -1\n")
    rc, err = _cli(capsys, clash, "--data-root", root, "--out-root", root / "sub")
    assert rc == 2 and "is a listed input and would be overwritten" in err
    assert not (root / "sub" / ".vmae2_reencode.json").exists()
    rc, err = _cli(capsys, lst, "--data-root", root, "--out-root", tmp_path / "o",
                   "--out-list", lst)
    assert rc == 2 and "is the input list" in err
    frames = tmp_path / "frames.txt"                 # a frame-folder list, read as auto
    frames.write_text("sub 40 1\n")
    rc, err = _cli(capsys, frames, "--data-root", root, "--out-root", tmp_path / "o")
    assert rc == 2 and "frame-folder lists" in err
