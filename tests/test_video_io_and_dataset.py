"""PyAV decoding of our VP9 files, and the pre-training dataset (repeated augmentation, skips)."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import vmae2_fast.data.pyav.frames as pd_module   # where the datasets reach the video decoder
from vmae2_fast.data.batches import PretrainBatch
from vmae2_fast.data.lists import VideoEntry, read_list
from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset, pretrain_collate
from vmae2_fast.data.synthetic import CLASS_NAMES, synthetic_video_frames
from vmae2_fast.data.media import VideoDecodeError
from vmae2_fast.data.pyav.video_io import count_frames, decode_frames


def video_path(ds, split, c, k):
    return os.path.join(ds.root, "videos", f"{split}_{CLASS_NAMES[c]}_{k:04d}.webm")


# ------------------------------------------------------------------------------------ video_io
def test_decoded_frames_match_generator_truth(tiny_synthetic):
    p = tiny_synthetic.params
    for split, c, k in [("train", 0, 0), ("train", 4, 1), ("val", 3, 0)]:
        path = video_path(tiny_synthetic, split, c, k)
        assert count_frames(path) == p["num_frames"]
        decoded = decode_frames(path, range(p["num_frames"]))
        truth = synthetic_video_frames(p["seed"], split, c, k, p["num_frames"], p["size"])
        assert decoded.dtype == np.uint8 and decoded.shape == truth.shape
        diff = decoded.astype(np.float64) - truth
        # Luma is nearly lossless (~1.5 levels); RGB error is dominated by the 4:2:0 chroma
        # subsampling of the fine colour textures at 48x48 (~7 levels; ~4.5 at 80x80).
        assert np.abs(diff @ [.299, .587, .114]).mean() < 3
        assert np.abs(diff).mean() < 10
        # and the right frame order: each decoded frame is closest to its own truth frame
        dist = np.abs(decoded[:, None].astype(np.float64) - truth[None]).mean((2, 3, 4))
        assert (dist.argmin(1) == np.arange(len(truth))).all()


def test_decode_any_order_with_repeats(tiny_synthetic):
    path = video_path(tiny_synthetic, "train", 1, 0)
    full = decode_frames(path, range(24))
    idx = [5, 2, 2, 23, 0, 5]
    np.testing.assert_array_equal(decode_frames(path, idx), full[idx])


def test_decode_errors_name_the_file(tiny_synthetic, tmp_path):
    path = video_path(tiny_synthetic, "train", 1, 0)
    with pytest.raises(VideoDecodeError, match="too short"):
        decode_frames(path, [0, 24])
    missing = str(tmp_path / "missing.webm")
    for fn in (count_frames, lambda q: decode_frames(q, [0])):
        with pytest.raises(VideoDecodeError, match="missing.webm"):
            fn(missing)
    junk = tmp_path / "junk.webm"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(VideoDecodeError, match="junk.webm"):
        decode_frames(str(junk), [0])


# ------------------------------------------------------------------------------------- dataset
def make_dataset(items, **kw):
    args = dict(num_frames=8, sampling_rate=2, input_size=32, num_sample=3, seed=0)
    args.update(kw)
    return PretrainVideoDataset(items, **args)


def test_item_shapes_and_repeated_augmentation_decodes_once(tiny_synthetic, monkeypatch):
    items = read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root)
    assert len(items) == 12
    calls = []
    real_decode = pd_module.decode_frames

    def counting_decode(path, indices, **kw):
        calls.append(path)
        return real_decode(path, indices, **kw)

    monkeypatch.setattr(pd_module, "decode_frames", counting_decode)
    ds = make_dataset(items)
    clips, skipped = ds[3]
    assert len(calls) == 1                      # one decode for the K views
    assert clips.dtype == torch.uint8 and clips.shape == (3, 3, 8, 32, 32)     # pixels
    assert skipped == []
    assert torch.isfinite(clips).all()
    # The K views are different crops of the same clip.
    assert not torch.equal(clips[0], clips[1]) or not torch.equal(clips[1], clips[2])


def test_collate_is_sample_major(tiny_synthetic):
    items = read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root)
    ds = make_dataset(items, num_sample=2)
    batch = [ds[0], ds[5]]
    out = pretrain_collate(batch)
    assert isinstance(out, PretrainBatch)
    video, skipped = out.video, out.skipped
    assert video.shape == (4, 3, 8, 32, 32)
    assert torch.equal(video[0], batch[0][0][0]) and torch.equal(video[1], batch[0][0][1])
    assert torch.equal(video[2], batch[1][0][0]) and torch.equal(video[3], batch[1][0][1])
    assert skipped == ()


def test_same_seed_epoch_index_reproduces(tiny_synthetic):
    items = read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root)
    a, b = make_dataset(items), make_dataset(items)
    assert torch.equal(a[4][0], b[4][0])        # a fresh instance (e.g. a resumed run)
    b.set_epoch(1)
    assert not torch.equal(a[4][0], b[4][0])    # another epoch draws other crops/windows
    a.set_epoch(1)
    assert torch.equal(a[4][0], b[4][0])
    assert not torch.equal(make_dataset(items, seed=1)[4][0], b[4][0])


def test_bad_videos_are_skipped_and_counted(tiny_synthetic, tmp_path):
    good = [VideoEntry(video_path(tiny_synthetic, "train", c, 0), 0, -1) for c in range(6)]
    junk = tmp_path / "junk.webm"
    junk.write_bytes(np.random.default_rng(1).bytes(3000))
    data = Path(good[0].path).read_bytes()
    truncated = tmp_path / "truncated.webm"
    truncated.write_bytes(data[: len(data) // 2])
    bad = [VideoEntry(str(junk), 0, -1),
           VideoEntry(str(tmp_path / "missing.webm"), 0, -1),
           VideoEntry(str(truncated), 0, 24)]    # the list promises 24 frames: too short
    ds = make_dataset(good + bad, num_sample=1)
    results = [ds[i] for i in range(len(ds))]
    for i, (clips, skipped) in enumerate(results):
        assert clips.shape == (1, 3, 8, 32, 32)
        assert (skipped == []) if i < 6 else (skipped[0][0] == bad[i - 6].path)
    reasons = " ".join(r for _, sk in results for _, r in sk)   # each skip says why
    assert "junk.webm" in reasons and "missing.webm" in reasons and "too short" in reasons
    # And through a DataLoader with the collate, the skips are gathered with their reasons.
    loader = torch.utils.data.DataLoader(ds, batch_size=9, collate_fn=pretrain_collate)
    batch = next(iter(loader))
    assert batch.video.shape[0] == 9 and list(batch.skipped) == [s for _, sk in results for s in sk]


def test_truncated_video_without_known_length_uses_decodable_frames(tiny_synthetic, tmp_path):
    data = Path(video_path(tiny_synthetic, "train", 2, 0)).read_bytes()
    truncated = tmp_path / "cut.webm"
    truncated.write_bytes(data[: len(data) // 2])
    clips, skipped = make_dataset([VideoEntry(str(truncated), 0, -1)])[0]
    assert skipped == [] and clips.shape == (3, 3, 8, 32, 32)


def test_all_bad_gives_no_clip_and_every_try(tmp_path):
    items = [VideoEntry(str(tmp_path / f"missing{i}.webm"), 0, -1) for i in range(3)]
    ds = make_dataset(items, max_retries=4)
    clips, skipped = ds[0]
    assert clips is None and len(skipped) == 5 and skipped[0][0] == items[0].path
    batch = pretrain_collate([ds[0], ds[1]])   # the trainer stops on None
    assert batch.video is None and len(batch.skipped) == 10


def test_empty_frame_directory_is_skipped_like_a_bad_video(tmp_path):
    (tmp_path / "frames").mkdir()      # frame folders are read (tests/test_rawframes.py); an empty one fails
    ds = make_dataset([VideoEntry(str(tmp_path / "frames"), 1, 10)])
    clips, skipped = ds[0]              # every try failed: no clip, each failure named with why
    assert clips is None and skipped and all(p == str(tmp_path / "frames") for p, _ in skipped)
    assert "missing frame" in skipped[0][1]
