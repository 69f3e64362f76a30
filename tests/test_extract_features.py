"""Sliding-window features: each row of a video's .npy is `forward_features` of that window,
decoded here independently with PyAV and normalised as the flags say (`--no-imagenet-norm`: the
released script's [0, 1] pixels)."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyav_truth import all_frames, to_model_input
from vmae2_fast.cli import run_command
from vmae2_fast.stages.features import window_starts
from vmae2_fast.models import build_classifier

SIZE = 32


@pytest.fixture(scope="module")
def setup(tiny_synthetic, tmp_path_factory):
    """A classifier checkpoint with non-trivial weights, and a folder of two of the tiny videos."""
    tmp = tmp_path_factory.mktemp("features")
    torch.manual_seed(0)
    clf = build_classifier("vit_micro", 6, img_size=SIZE, num_frames=4)
    with torch.no_grad():
        for q in clf.parameters():
            q.add_(0.05 * torch.randn_like(q))
    torch.save({"model": clf.state_dict(), "config": {"model": "vit_micro", "input_size": SIZE}},
               tmp / "c.pth")
    videos = tmp / "videos"
    videos.mkdir()
    for src in sorted((Path(tiny_synthetic.root) / "videos").iterdir())[:2]:
        shutil.copy(src, videos / src.name)
    return tmp / "c.pth", videos, clf.state_dict()


def expected(path, sd, window, stride, frame_stride, imagenet_norm):
    """Windows of `window` frames `frame_stride` apart, starting every `stride` frames and lying
    inside the video (one padded with the last frame if the video is shorter than the span)."""
    frames = F.interpolate(all_frames(path), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    span = (window - 1) * frame_stride + 1
    if len(frames) >= span:
        clips = [frames[s:s + span:frame_stride] for s in range(0, len(frames) - span + 1, stride)]
    else:
        taken = frames[::frame_stride]
        clips = [torch.cat([taken, taken[-1:].expand(window - len(taken), -1, -1, -1)])]
    model = build_classifier("vit_micro", 6, img_size=SIZE, num_frames=window).eval()
    model.load_state_dict(sd)
    with torch.no_grad():
        return model.forward_features(torch.stack([to_model_input(c, imagenet_norm) for c in clips])).numpy()


@pytest.mark.parametrize("window, stride, frame_stride, norm", [
    (4, 4, 1, True), (4, 3, 2, False), (16, 4, 2, True)],
    ids=["thumos-like", "frame-stride-no-imagenet-norm", "short-video-padded"])
def test_features_are_forward_features_of_the_windows(setup, tmp_path, window, stride, frame_stride,
                                                      norm):
    ckpt, videos, sd = setup
    res = run_command("extract_features", ["--checkpoint", str(ckpt), "--videos", str(videos), "--out",
                                str(tmp_path), "--window", str(window), "--stride", str(stride),
                                "--frame-stride", str(frame_stride), "--batch-size", "2",
                                "--imagenet-norm" if norm else "--no-imagenet-norm"])
    assert res["videos"] == 2
    for video in sorted(videos.iterdir()):
        got = np.load(tmp_path / (video.stem + ".npy"))
        want = expected(video, sd, window, stride, frame_stride, norm)
        assert got.dtype == np.float32 and got.shape == want.shape == (len(want), 64)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        # the normalisation flag matters: the other one gives other features
        other = expected(video, sd, window, stride, frame_stride, not norm)
        assert np.abs(other - want).max() > 1e-2


def test_window_starts():
    assert window_starts(30, 16, 4) == [0, 4, 8, 12]
    assert window_starts(10, 16, 4) == [0]
