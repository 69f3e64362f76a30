import numpy as np
import pytest
import torch
from PIL import Image

from vmae2_fast.constants import IMAGENET_MEAN, IMAGENET_STD
from vmae2_fast.stages.preview import save_reconstruction_preview

P, TUB, T, H, W = 4, 2, 4, 8, 12          # T'=2, H'=2, W'=3 -> 12 tokens
HP, WP = H // P, W // P
VIS = [0, 3, 5, 10]
DEC = [1, 2, 4, 5, 7, 9]                  # 5 is both visible and decoded
NEITHER = sorted(set(range(12)) - set(VIS) - set(DEC))


def token_box(tok):
    t, rest = divmod(tok, HP * WP)
    h, w = divmod(rest, WP)
    return slice(t * TUB, (t + 1) * TUB), slice(h * P, (h + 1) * P), slice(w * P, (w + 1) * P)


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0.05, 0.95, size=(3, T, H, W))          # [0, 1], no clipping later
    mean = np.array(IMAGENET_MEAN).reshape(3, 1, 1, 1)
    std = np.array(IMAGENET_STD).reshape(3, 1, 1, 1)
    video = torch.tensor((pixels - mean) / std, dtype=torch.float32)
    # Targets computed token by token with explicit slicing, independent of the module.
    pred = []
    for tok in DEC:
        ts, hs, ws = token_box(tok)
        patch = pixels[:, ts, hs, ws].transpose(1, 2, 3, 0).reshape(-1, 3)  # (t,row,col) x C
        norm = (patch - patch.mean(0)) / (patch.std(0, ddof=1) + 1e-6)
        pred.append(norm.reshape(-1))                                      # channel fastest
    return pixels, video, torch.tensor(np.stack(pred), dtype=torch.float32)


def cell(img, row, frame, tok=None, gap=2):
    y0, x0 = row * (H + gap), frame * (W + gap)
    block = img[y0:y0 + H, x0:x0 + W]
    if tok is None:
        return block
    ts, hs, ws = token_box(tok)
    return block[hs, ws]


def frame_of(pixels, f):
    return np.round(pixels[:, f].transpose(1, 2, 0) * 255).astype(np.int64)


def test_reconstruction_matches_input(tmp_path):
    pixels, video, pred = make_inputs()
    out = save_reconstruction_preview(
        tmp_path / "sub" / "preview.png", video, torch.tensor(VIS), torch.tensor(DEC), pred,
        patch_size=P, tubelet_size=TUB)
    assert out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["preview.png"]  # no temp left
    img = np.asarray(Image.open(out).convert("RGB")).astype(np.int64)
    assert img.shape == (3 * H + 4, T * W + (T - 1) * 2, 3)

    for f in range(T):
        truth = frame_of(pixels, f)
        assert np.abs(cell(img, 0, f) - truth).max() <= 1          # input row
        for tok in range(12):
            ts, hs, ws = token_box(tok)
            if not (ts.start <= f < ts.stop):
                continue
            masked = cell(img, 1, f, tok)
            recon = cell(img, 2, f, tok)
            if tok in VIS:
                assert np.abs(masked - truth[hs, ws]).max() <= 1
            else:
                assert np.abs(masked - 128).max() <= 1, tok
            if tok in VIS or tok in DEC:
                assert np.abs(recon - truth[hs, ws]).max() <= 1, tok
            else:
                assert np.abs(recon - 128).max() <= 1, tok
    assert NEITHER  # the layout really exercises the grey case


def test_prediction_is_denormalised_with_true_patch_stats(tmp_path):
    pixels, video, pred = make_inputs(1)
    path = save_reconstruction_preview(tmp_path / "zero.png", video, VIS, DEC, torch.zeros_like(pred),
                                       patch_size=P, tubelet_size=TUB)
    img = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    tok = 1  # decoded, not visible: a zero prediction shows the true patch mean per channel
    ts, hs, ws = token_box(tok)
    patch_mean = pixels[:, ts, hs, ws].reshape(3, -1).mean(1)
    got = cell(img, 2, ts.start, tok)
    assert np.abs(got - np.round(patch_mean * 255)).max() <= 1


def test_frame_subsampling_and_validation(tmp_path):
    _, video, pred = make_inputs()
    path = save_reconstruction_preview(tmp_path / "two.png", video, VIS, DEC, pred,
                                       patch_size=P, tubelet_size=TUB, max_frames=2)
    img = Image.open(path)
    assert img.size == (2 * W + 2, 3 * H + 4)
    assert img.info["Frames"] == "0,3"
    assert "mean/std" in img.info["Description"]
    with pytest.raises(ValueError):
        save_reconstruction_preview(tmp_path / "bad.png", video, VIS, DEC, pred[:-1],
                                    patch_size=P, tubelet_size=TUB)
    with pytest.raises(ValueError):
        save_reconstruction_preview(tmp_path / "bad.png", video, [0, 99], DEC, pred,
                                    patch_size=P, tubelet_size=TUB)
    assert not (tmp_path / "bad.png").exists()
