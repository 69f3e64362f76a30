"""The embedded synthetic dataset: formats, balance, determinism, atomic caching, motion classes."""
import collections
import os
from pathlib import Path

import numpy as np
import pytest

import vmae2_fast.data.synthetic as syn
from vmae2_fast.data.lists import read_cls_list, read_list
from vmae2_fast.data.synthetic import (CLASS_NAMES, ensure_synthetic_dataset,
                                       synthetic_video_frames)
from vmae2_fast.data.pyav.video_io import decode_frames

TINY = dict(videos_per_class_train=1, videos_per_class_val=0, num_frames=4, size=16,
            progress=False)


def test_lists_use_the_official_formats(tiny_synthetic):
    ds = tiny_synthetic
    for line in Path(ds.pretrain_list).read_text().splitlines():
        path, start, total = line.split(" ")
        assert path.startswith("videos/") and path.endswith(".webm")
        assert (start, total) == ("0", "-1")
        assert os.path.isfile(os.path.join(ds.root, path))
    for lst in (ds.train_list, ds.val_list):
        for line in Path(lst).read_text().splitlines():
            path, label = line.split(" ")
            assert 0 <= int(label) < len(CLASS_NAMES)
            assert CLASS_NAMES[int(label)] in path             # name says its class
            assert os.path.isfile(os.path.join(ds.root, path))
    assert Path(os.path.join(ds.root, "classes.txt")).read_text().split() == list(CLASS_NAMES)
    assert ds.class_names == list(CLASS_NAMES) and ds.num_classes == 6
    # The project's own readers accept them (paths relative to the root).
    assert len(read_list(ds.pretrain_list, ds.root)) == 12


def test_class_balance(tiny_synthetic):
    train = collections.Counter(label for _, label in read_cls_list(tiny_synthetic.train_list))
    val = collections.Counter(label for _, label in read_cls_list(tiny_synthetic.val_list))
    assert train == {c: 2 for c in range(6)} and val == {c: 1 for c in range(6)}
    pretrain = {p.path for p in read_list(tiny_synthetic.pretrain_list)}
    assert pretrain == {p for p, _ in read_cls_list(tiny_synthetic.train_list)}


def test_frames_are_deterministic_per_seed():
    a = synthetic_video_frames(0, "train", 2, 1, 12, 32)
    assert a.dtype == np.uint8 and a.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(a, synthetic_video_frames(0, "train", 2, 1, 12, 32))
    assert not np.array_equal(a, synthetic_video_frames(1, "train", 2, 1, 12, 32))
    assert not np.array_equal(a, synthetic_video_frames(0, "train", 2, 0, 12, 32))
    assert not np.array_equal(a, synthetic_video_frames(0, "val", 2, 1, 12, 32))


def test_appearance_does_not_depend_on_the_class():
    # The class is drawn last from the same stream: same seed -> same first frame for all classes,
    # so nothing but the motion can tell the classes apart.
    first = [syn.render_synthetic_video(c, np.random.default_rng(7), 3, 32) for c in range(6)]
    for c in range(1, 6):
        np.testing.assert_array_equal(first[c][0], first[0][0])
        assert not np.array_equal(first[c][1:], first[0][1:])


def test_h264_option(tmp_path):
    ds = ensure_synthetic_dataset(str(tmp_path / "h264"), codec="h264", **TINY)
    path, _ = read_cls_list(ds.train_list, ds.root)[0]
    assert path.endswith(".mp4")
    truth = synthetic_video_frames(0, "train", 0, 0, 4, 16)
    # Luma only: at 16x16 the 4:2:0 chroma subsampling alone costs ~16 levels of RGB error.
    luma_err = (decode_frames(path, range(4)).astype(np.float64) - truth) @ [.299, .587, .114]
    assert np.abs(luma_err).mean() < 4


def test_second_call_reuses_the_folder(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    first = ensure_synthetic_dataset(root, **TINY)
    assert os.path.isfile(os.path.join(root, ".complete"))

    def must_not_encode(*args, **kwargs):
        raise AssertionError("regenerated an existing dataset")

    monkeypatch.setattr(syn, "write_video", must_not_encode)
    assert ensure_synthetic_dataset(root, **TINY) == first
    with pytest.raises(ValueError, match="other parameters"):
        ensure_synthetic_dataset(root, **dict(TINY, seed=3))
    assert os.listdir(tmp_path) == ["ds"]                      # no temporary folder left


def test_crash_leaves_no_partial_dataset(tmp_path, monkeypatch):
    real = syn.write_video
    written = []

    def crash_after_two(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated crash")
        written.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "write_video", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(str(tmp_path / "ds"), **TINY)
    assert os.listdir(tmp_path) == []                          # neither root nor temp folder
    monkeypatch.setattr(syn, "write_video", real)
    ensure_synthetic_dataset(str(tmp_path / "ds"), **TINY)     # a later call completes it
    assert os.path.isfile(tmp_path / "ds" / ".complete")


def test_default_root_depends_on_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("VMAE2_FAST_CACHE", str(tmp_path))
    a = ensure_synthetic_dataset(**TINY)
    b = ensure_synthetic_dataset(**dict(TINY, seed=1))
    assert os.path.dirname(a.root) == str(tmp_path) == os.path.dirname(b.root)
    assert os.path.basename(a.root).startswith(f"synthetic-v{syn.GENERATOR_VERSION}-")
    assert a.root != b.root
    assert ensure_synthetic_dataset(**TINY).root == a.root


# -------------------------------------------------------------------- motion tells the classes
def object_drift(frames):
    """Mean per-frame displacement (dx, dy) of the moving object, from the decoded video.

    No optical flow: the static background is the per-pixel temporal median, the object is what
    differs from it, and its position is a circular mean (the object wraps around the frame).
    """
    f = frames.astype(np.float32)
    mask = np.abs(f - np.median(f, axis=0)).sum(-1) > 40                 # (T, H, W)
    _, h, w = mask.shape
    zx = (mask * np.exp(2j * np.pi * (np.arange(w) + .5) / w)).sum((1, 2))
    zy = (mask * np.exp(2j * np.pi * (np.arange(h) + .5) / h)[:, None]).sum((1, 2))
    dx = np.angle(zx[1:] / zx[:-1]) * w / (2 * np.pi)
    dy = np.angle(zy[1:] / zy[:-1]) * h / (2 * np.pi)
    return dx.mean(), dy.mean()


def rotation_errors(frames, degrees=7.0):
    """Error of predicting frame t+1 by turning frame t clockwise vs counter-clockwise."""
    g = frames.astype(np.float32).mean(-1)
    _, h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    change = g.std(0)                 # only the spinning object changes over time
    # Centre the spinning object (it may straddle an edge: circular mean, then roll).
    cx = np.angle((change * np.exp(2j * np.pi * xx / w)).sum()) % (2 * np.pi) * w / (2 * np.pi)
    cy = np.angle((change * np.exp(2j * np.pi * yy / h)).sum()) % (2 * np.pi) * h / (2 * np.pi)
    g = np.roll(g, (int(h / 2 - cy), int(w / 2 - cx)), axis=(1, 2))
    change = g.std(0)
    region = change > 0.5 * change.max()
    cx, cy = xx[region].mean(), yy[region].mean()
    errors = []
    for sign in (1, -1):              # +1: clockwise on screen (y points down)
        a = np.deg2rad(degrees) * sign
        # Frame t+1 at p equals frame t at R(-a) (p - c) + c; bilinear lookup.
        sx = np.cos(a) * (xx - cx) + np.sin(a) * (yy - cy) + cx - 0.5
        sy = -np.sin(a) * (xx - cx) + np.cos(a) * (yy - cy) + cy - 0.5
        x0 = np.clip(np.floor(sx).astype(int), 0, w - 2)
        y0 = np.clip(np.floor(sy).astype(int), 0, h - 2)
        fx, fy = np.clip(sx - x0, 0, 1), np.clip(sy - y0, 0, 1)
        prev = g[:-1]
        pred = (prev[:, y0, x0] * (1 - fx) * (1 - fy) + prev[:, y0, x0 + 1] * fx * (1 - fy)
                + prev[:, y0 + 1, x0] * (1 - fx) * fy + prev[:, y0 + 1, x0 + 1] * fx * fy)
        errors.append(np.abs(pred - g[1:])[:, region].mean())
    return errors


def test_classes_differ_by_motion(tiny_synthetic):
    ds = tiny_synthetic
    videos = collections.defaultdict(list)
    for path, label in read_cls_list(ds.train_list, ds.root) + read_cls_list(ds.val_list, ds.root):
        videos[CLASS_NAMES[label]].append(decode_frames(path, range(24)))
    for frames in videos["move_left"] + videos["move_right"]:
        dx, dy = object_drift(frames)
        assert abs(dx) > 0.5 and abs(dy) < 0.2
    assert all(object_drift(f)[0] < 0 for f in videos["move_left"])
    assert all(object_drift(f)[0] > 0 for f in videos["move_right"])
    assert all(object_drift(f)[1] < -0.5 for f in videos["move_up"])
    assert all(object_drift(f)[1] > 0.5 for f in videos["move_down"])
    for frames in videos["rotate_cw"]:
        cw, ccw = rotation_errors(frames)
        assert cw < 0.7 * ccw
    for frames in videos["rotate_ccw"]:
        cw, ccw = rotation_errors(frames)
        assert ccw < 0.7 * cw
