"""Multi-scale crop boxes, and crop + resize + ImageNet normalisation."""
import numpy as np
import pytest
import torch
from PIL import Image

from vmae2_fast.constants import IMAGENET_MEAN, IMAGENET_STD
from vmae2_fast.data.clip_sampling import multiscale_crop_box
from vmae2_fast.data.clip_sampling import resized_short_side
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast.data.transforms import crop_resize, resize_short_side


def model_input(frames, box, size):
    """What the model sees of one view: the uint8 crop, normalised as the stage does."""
    return normalize_on_device(crop_resize(frames, box, size)[None])[0]


def expected_pairs(w, h, out, scales=(1, .875, .75, .66)):
    sides = [int(min(w, h) * s) for s in scales]
    sides = [out if abs(s - out) < 3 else s for s in sides]
    return {(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}


def expected_offsets(w, h, cw, ch):
    ws, hs = (w - cw) // 4, (h - ch) // 4
    # corners, centre, edge centres, quarter points (the official 13 positions)
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
            (1, 1), (3, 1), (1, 3), (3, 3)]
    return {(i * ws, j * hs) for i, j in grid}


def test_boxes_come_from_allowed_pairs_and_fixed_offsets():
    w, h, out = 340, 256, 224
    rng = np.random.default_rng(0)
    pairs = expected_pairs(w, h, out)
    assert len(pairs) == 10
    seen_pairs, seen_offsets = set(), {}
    for _ in range(4000):
        x0, y0, cw, ch = multiscale_crop_box(w, h, out, rng)
        assert (cw, ch) in pairs
        assert (x0, y0) in expected_offsets(w, h, cw, ch)
        assert 0 <= x0 and x0 + cw <= w and 0 <= y0 and y0 + ch <= h
        seen_pairs.add((cw, ch))
        seen_offsets.setdefault((cw, ch), set()).add((x0, y0))
    assert seen_pairs == pairs  # every pair is drawn
    # every one of the 13 positions is drawn (for a size with distinct positions)
    assert seen_offsets[(168, 192)] == expected_offsets(w, h, 168, 192)
    assert len(expected_offsets(w, h, 168, 192)) == 13


def test_sides_within_3px_snap_to_output_size():
    rng = np.random.default_rng(0)
    # base 254: int(254 * .875) = 222 is within 3 px of 224 -> snapped
    sides = {b[2] for b in (multiscale_crop_box(300, 254, 224, rng) for _ in range(500))}
    assert 224 in sides and 222 not in sides
    # base 253: int(253 * .875) = 221 is 3 px away -> kept (the official test is "< 3")
    sides = {b[2] for b in (multiscale_crop_box(300, 253, 224, rng) for _ in range(500))}
    assert 221 in sides and 224 not in sides


def test_normalisation_and_layout_match_hand_computation():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(3, 20, 24, 3), dtype=np.uint8)
    box = (5, 2, 16, 16)  # crop size == output size: no resampling
    pixels = crop_resize(frames, box, 16)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 16, 16)
    assert torch.equal(pixels, torch.from_numpy(frames[:, 2:18, 5:21, :]).permute(3, 0, 1, 2))
    out = model_input(frames, box, 16)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 16, 16)
    crop = frames[:, 2:18, 5:21, :].astype(np.float64) / 255.0
    want = (crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)   # (T, H, W, C)
    np.testing.assert_allclose(out.numpy(), want.transpose(3, 0, 1, 2), atol=1e-5)
    # numpy and torch inputs give the same result
    assert torch.equal(pixels, crop_resize(torch.from_numpy(frames), box, 16))


def test_downscale_matches_pil_bilinear():
    rng = np.random.default_rng(2)
    # smooth-ish content plus noise, like real frames
    yy, xx = np.mgrid[0:100, 0:130]
    base = 127 + 80 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 7.0)[..., None]
    frames = np.clip(base[None] + rng.normal(0, 20, size=(2, 100, 130, 3)), 0, 255)
    frames = frames.astype(np.uint8)
    box, size = (7, 11, 90, 70), 48
    levels = crop_resize(frames, box, size).numpy().astype(np.float64)       # (3, T, S, S) grey levels
    for t in range(2):
        pil = Image.fromarray(frames[t]).crop((7, 11, 97, 81)).resize((size, size),
                                                                        Image.BILINEAR)
        diff = np.abs(levels[:, t].transpose(1, 2, 0) - np.asarray(pil, dtype=np.float64))
        # Tolerance: at most 1 grey level anywhere, and on at most 5 % of the values
        # (torch's uint8 antialiased bilinear and PIL round slightly differently).
        assert diff.max() <= 1.0 + 1e-3
        assert (diff > 0.5).mean() < 0.05


def test_bad_inputs():
    frames = np.zeros((2, 10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="does not fit"):
        crop_resize(frames, (5, 5, 8, 8), 8)
    with pytest.raises(ValueError, match="uint8"):
        crop_resize(frames.astype(np.float32), (0, 0, 8, 8), 8)


@pytest.mark.parametrize("h, w, size", [(30, 40, 20), (40, 30, 20), (25, 25, 25), (25, 25, 30),
                                        (7, 100, 16), (101, 64, 64)])
def test_short_side_resize_follows_the_rule_the_dali_crops_use(h, w, size):
    """The PyAV views resize with `clip_sampling.resized_short_side`, the size DALI's test crops
    are computed in: the short side becomes ``size``, the aspect ratio is kept to rounding."""
    x = torch.rand(2, 3, h, w)
    out = resize_short_side(x, size)
    nh, nw = out.shape[-2:]
    assert (nw, nh) == resized_short_side(w, h, size)
    assert min(nh, nw) == size and abs(max(nh, nw) - max(h, w) * size / min(h, w)) <= 0.5
    if min(h, w) == size:
        assert out is x                     # nothing to resize
