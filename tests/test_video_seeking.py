"""`video_io.decode_frames` decodes only what a clip needs (from the keyframe before it, unwanted
non-reference frames dropped) and still returns, bit for bit, the frames a plain decode of the
whole file gives at those indices: on H.264 with B-frames (x264's defaults: long GOP, scene-cut
keyframe; a fixed GOP of 16; an open GOP), on VP9, and through the ordinal fallback for a stream
without timestamps. The repeated-augmentation views of a pre-training item come from one decode
and equal views decoded one by one."""
import numpy as np
import pytest
import torch

from needs import module

module("av")
import av  # noqa: E402

from vmae2_fast.data.clip_sampling import multiscale_crop_box, pretrain_frame_indices  # noqa: E402
from vmae2_fast.data.lists import VideoEntry  # noqa: E402
from vmae2_fast.data.pyav import frames as pyav_frames  # noqa: E402
from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset  # noqa: E402
from vmae2_fast.data.pyav.video_io import DecodeStats, decode_frames  # noqa: E402
from vmae2_fast.data.transforms import crop_resize  # noqa: E402
from vmae2_fast.testing.natural_video import NaturalVideo, write_natural_video  # noqa: E402

N = 90
CLIP = NaturalVideo(width=160, height=96, frames=N, fps=30, seed=3, cut_at=50)
# name -> (codec, gop, extra encoder options)
KINDS = {
    "h264-x264-defaults": ("h264", None, None),       # keyframes at 0 and at the cut, B-pyramid
    "h264-gop16": ("h264", 16, None),
    "h264-open-gop": ("h264", None, {"x264-params": "keyint=30:min-keyint=30:scenecut=0:open-gop=1"}),
    "vp9-gop20": ("vp9", 20, None),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeking")
    out = {}
    for name, (codec, gop, opts) in KINDS.items():
        path = folder / f"{name}.{'mp4' if codec == 'h264' else 'webm'}"
        write_natural_video(str(path), CLIP, codec=codec, gop=gop, options=opts)
        with av.open(str(path)) as c:
            full = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        with av.open(str(path)) as c:
            packets = [(p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size]
        out[name] = (str(path), full, packets)
    return out


def keyframes(packets) -> list:
    """Frame numbers of the keyframes (timestamp ranks)."""
    rank = {p: i for i, p in enumerate(sorted(p for p, _ in packets))}
    return sorted(rank[p] for p, k in packets if k)


def test_the_files_are_what_the_tests_need(videos):
    """B-frames (packets out of presentation order), the keyframes each kind promises."""
    for name, (_, full, packets) in videos.items():
        assert len(full) == len(packets) == N, name
        reordered = sum(b[0] < a[0] for a, b in zip(packets, packets[1:]))
        assert (reordered > 10) == name.startswith("h264"), name
    assert keyframes(videos["h264-x264-defaults"][2]) == [0, 50]
    assert keyframes(videos["h264-gop16"][2]) == list(range(0, N, 16))
    assert keyframes(videos["vp9-gop20"][2]) == list(range(0, N, 20))
    # open GOP: the later I-frames are keyframes that frames decoded after them precede on screen
    open_keys = keyframes(videos["h264-open-gop"][2])
    assert len(open_keys) == 3 and open_keys[1] > 29


def clip_sets(rng) -> list:
    return ([[i] for i in range(N)]
            + [list(range(s, min(N, s + 32), 4)) for s in range(0, N, 5)]      # pre-training windows
            + [sorted(rng.choice(N, 8, replace=False).tolist()) for _ in range(20)]
            + [[70, 3, 3, 41, 70, 0]])                                          # any order, repeats


@pytest.mark.parametrize("name", list(KINDS))
def test_decoded_frames_equal_a_full_decode(videos, name):
    path, full, packets = videos[name]
    keys = keyframes(packets)
    for idx in clip_sets(np.random.default_rng(0)):
        stats = DecodeStats()
        got = decode_frames(path, idx, stats=stats)
        np.testing.assert_array_equal(got, full[idx], err_msg=f"{name} {idx}")
        assert not stats.from_start, (name, idx)
        # never more than from the keyframe before the first frame to the last, and a few
        # packets more for the decoder's reorder delay
        key = max(k for k in keys if k <= min(idx))
        assert stats.decoded <= max(idx) - key + 1 + 4, (name, idx, stats)


def test_decoder_threads_give_the_same_frames(videos):
    """With FFmpeg's frame threads (more frames in flight, the skip setting copied to each
    thread) the clips are the same."""
    for name in ("h264-x264-defaults", "h264-open-gop"):
        path, full, _ = videos[name]
        for idx in clip_sets(np.random.default_rng(1))[N::3]:
            stats = DecodeStats()
            np.testing.assert_array_equal(decode_frames(path, idx, threads=3, stats=stats), full[idx])
            assert not stats.from_start, (name, idx)


def test_a_late_window_skips_the_frames_before_its_keyframe(videos):
    """The point of it: a window after the last keyframe of the x264-defaults file decodes from
    there (frame 50), and drops most unwanted B-frames undecoded."""
    path, full, _ = videos["h264-x264-defaults"]
    stats = DecodeStats()
    idx = list(range(60, 90, 4))
    np.testing.assert_array_equal(decode_frames(path, idx, stats=stats), full[idx])
    assert stats.starts == 1 and stats.skipped > 5
    assert stats.decoded + stats.skipped <= 90 - 50 and stats.decoded < 30


def test_sparse_frames_restart_at_later_keyframes(videos):
    """Frames far apart (TSN-style sampling) restart the decoder at each one's keyframe instead
    of decoding the stretches between them."""
    path, full, _ = videos["h264-gop16"]
    stats = DecodeStats()
    idx = [2, 35, 66, 83]
    np.testing.assert_array_equal(decode_frames(path, idx, stats=stats), full[idx])
    assert stats.starts == 4 and stats.decoded + stats.skipped < 40


def test_a_stream_without_timestamps_is_decoded_from_the_start(videos, tmp_path):
    """A raw H.264 stream has no timestamps to rank: the clip is decoded ordinally from frame
    0, which is the definition of the frame numbers."""
    src, full, _ = videos["h264-x264-defaults"]
    raw = tmp_path / "clip.h264"
    with av.open(src) as i, av.open(str(raw), "w", format="h264") as o:
        s = i.streams.video[0]
        out = o.add_stream_from_template(s)
        for p in i.demux(s):
            if p.size:
                p.stream = out
                o.mux(p)
    with av.open(str(raw)) as c:
        assert next(p for p in c.demux(video=0) if p.size).pts is None
    for idx in ([5, 9, 13], [60, 64, 89], [0]):
        stats = DecodeStats()
        np.testing.assert_array_equal(decode_frames(str(raw), idx, stats=stats), full[idx])
        assert stats.from_start and max(idx) + 1 <= stats.decoded <= max(idx) + 1 + 4, stats


def test_too_short_is_an_error_naming_the_file(videos):
    from vmae2_fast.data.media import VideoDecodeError
    path = videos["h264-gop16"][0]
    with pytest.raises(VideoDecodeError, match="too short.*h264-gop16"):
        decode_frames(path, [3, N])


def test_repeated_views_come_from_one_decode_and_equal_views_decoded_one_by_one(videos, monkeypatch):
    """A pre-training item decodes its video once for its K views; each view equals the crop,
    at the box the item drew, of the same frames decoded again for that view alone."""
    path, _, _ = videos["h264-x264-defaults"]
    calls = []
    real = pyav_frames.decode_frames
    monkeypatch.setattr(pyav_frames, "decode_frames",
                        lambda p, idx, **kw: calls.append(list(idx)) or real(p, idx, **kw))
    ds = PretrainVideoDataset([VideoEntry(path, 0, N)], num_frames=8, sampling_rate=4, input_size=48,
                              num_sample=4, seed=7)
    ds.set_epoch(3)
    clips, skipped = ds[0]
    assert skipped == [] and clips.shape == (4, 3, 8, 48, 48) and len(calls) == 1
    # the item's draws, from its generator: the window, then one box per view
    rng = np.random.default_rng([7, 3, 0, 0])
    idx = pretrain_frame_indices(N, 8, 4, rng)
    assert calls[0] == idx.tolist()
    for k in range(4):
        box = multiscale_crop_box(160, 96, 48, rng)
        alone = crop_resize(torch.from_numpy(decode_frames(path, idx)), box, 48)
        assert torch.equal(clips[k], alone), k
    assert not all(torch.equal(clips[0], clips[k]) for k in range(1, 4))
