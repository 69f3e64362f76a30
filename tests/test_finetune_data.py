"""Fine-tuning data: official linspace sampling, crops, RandAugment on every frame alike, erasing."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from vmae2_fast.data.batches import ClassifyBatch
from vmae2_fast.data.clip_sampling import (finetune_frame_indices, random_erasing_box,
                                           random_resized_crop_box, sparse_frame_indices)
from vmae2_fast.data.lists import read_cls_list
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast.data.pyav.classify import VideoClsDataset, cls_collate
from vmae2_fast.data.transforms import draw_cube_erasure
from vmae2_fast.data.pyav.randaugment import VideoRandAugment, parse_policy


class FixedEnd:
    def __init__(self, end):
        self.end = end

    def integers(self, lo, hi):
        assert lo <= self.end < hi
        return self.end


def test_official_sampling_examples():
    idx = finetune_frame_indices(100, 16, 4, FixedEnd(76), train=True)
    assert idx[:5].tolist() == [12, 16, 20, 24, 29] and idx[-1] == 75
    assert finetune_frame_indices(30, 16, 4, None, train=False).tolist() == \
        [0, 5, 10, 15, 20, 25, 29] + [29] * 9
    val = finetune_frame_indices(100, 16, 4, None, train=False)       # centred: end = (64+100)//2
    assert val[0] == 82 - 64 and val[-1] == 81
    assert sparse_frame_indices(32, 16, None, train=False).tolist() == list(range(1, 32, 2))


def test_random_resized_crop_box_fits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, cw, ch = random_resized_crop_box(90, 60, rng)
        assert 0 <= y0 and y0 + ch <= 60 and 0 <= x0 and x0 + cw <= 90 and ch > 0 and cw > 0


def _pil(frame, fn):
    return np.asarray(fn(Image.fromarray(frame)))


def _signed(fn):
    """The op at +v or at -v: the sign is drawn per clip."""
    return lambda f: [fn(f, 1), fn(f, -1)]


# What one op at magnitude 7 (no jitter) does to a frame, from the published policy (rotate up to
# 30 degrees, shear 0.3, translate 0.45 of the side, posterize to 4 - int(0.4 m) bits, solarize
# above 256 - int(25.6 m), solarize-add int(11 m), enhance by 1 +- 0.09 m). Pixel ops in NumPy.
_FILL = (128, 128, 128)
_BICUBIC = Image.Resampling.BICUBIC
OP_TRUTH = {
    "Invert": lambda f: [255 - f],
    "PosterizeIncreasing": lambda f: [f & 0b11000000],                               # 2 bits
    "SolarizeIncreasing": lambda f: [np.where(f >= 77, 255 - f, f).astype(np.uint8)],
    "SolarizeAdd": lambda f: [np.where(f < 128, np.minimum(f.astype(int) + 77, 255), f).astype(np.uint8)],
    "Rotate": _signed(lambda f, s: _pil(f, lambda im: im.rotate(21 * s, resample=_BICUBIC, fillcolor=_FILL))),
    "ShearX": _signed(lambda f, s: _pil(f, lambda im: im.transform(
        im.size, Image.Transform.AFFINE, (1, 0.21 * s, 0, 0, 1, 0), resample=_BICUBIC, fillcolor=_FILL))),
    "TranslateYRel": _signed(lambda f, s: _pil(f, lambda im: im.transform(
        im.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, 0.315 * s * im.size[1]), resample=_BICUBIC,
        fillcolor=_FILL))),
    "BrightnessIncreasing": _signed(lambda f, s: _pil(f, lambda im: ImageEnhance.Brightness(im).enhance(1 + 0.63 * s))),
}


def test_randaugment_policy_parsing():
    assert parse_policy("rand-m7-n4-mstd0.5-inc1") == {"m": 7.0, "n": 4, "mstd": 0.5}
    assert parse_policy("none") is None
    with pytest.raises(ValueError):
        parse_policy("augmix-m3")


def test_randaugment_ops_act_and_every_frame_gets_the_same_one():
    """One op per clip (n=1, always applied, magnitude exactly 7) on three DIFFERENT frames: each
    output frame must be that op applied to that frame with the clip's one parameter."""
    ra = VideoRandAugment(7, 1, 0.0, prob=1.0)
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    seen = set()
    for seed in range(200):
        name = ra.plan(np.random.default_rng(seed))[0][0]     # the op __call__ will draw
        if name not in OP_TRUTH or name in seen:
            continue
        out = ra(frames, np.random.default_rng(seed))
        assert out.shape == frames.shape and out.dtype == np.uint8
        truths = [np.stack(per_sign) for per_sign in zip(*(OP_TRUTH[name](f) for f in frames))]
        assert any(np.array_equal(out, t) for t in truths), f"{name} (seed {seed})"
        assert not np.array_equal(out, frames), name
        seen.add(name)
    assert seen == set(OP_TRUTH)


def test_randaugment_full_policy_changes_clips_identically_per_frame():
    ra = VideoRandAugment.from_policy("rand-m7-n4-mstd0.5-inc1")
    frame = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    changed = 0
    for seed in range(10):
        out = ra(np.stack([frame] * 3), np.random.default_rng(seed))
        assert out.shape == (3, 32, 40, 3) and out.dtype == np.uint8
        assert (out == out[:1]).all()                 # identical frames stay identical
        changed += not np.array_equal(out[0], frame)
    assert changed >= 8                               # 4 ops at p=0.5: all skipped 1 time in 16


@pytest.mark.parametrize("h, w", [(32, 32), (24, 40)])
def test_cube_erasing_same_box_every_frame_and_the_draw_dali_makes(h, w):
    """The PyAV path's erasure is DALI's rectangle (`clip_sampling.random_erasing_box`, the same
    draws from the same generator) plus its noise drawn next; pasted after normalisation, it
    changes the same rectangle of every frame and nothing else."""
    for seed in range(20):
        got = draw_cube_erasure(4, h, w, np.random.default_rng(seed), prob=1.0)
        box = random_erasing_box(h, w, np.random.default_rng(seed), 1.0)
        if box is None:                     # ten tries without a fitting box: no erasing at all
            assert got is None
            continue
        y0, x0, eh, ew, noise = got
        assert (y0, x0, eh, ew) == box and noise.shape == (3, 4, eh, ew)
        assert 0 <= y0 and y0 + eh <= h and 0 <= x0 and x0 + ew <= w
        x = torch.zeros(1, 3, 4, h, w, dtype=torch.uint8)
        diff = normalize_on_device(x, erase=[(0, *got)])[0] - normalize_on_device(x)[0]
        changed = (diff != 0).any(0)
        assert changed.any() and torch.equal(changed, changed[:1].expand_as(changed))
        assert not changed[:, :y0].any() and not changed[:, :, :x0].any()
    assert draw_cube_erasure(4, h, w, np.random.default_rng(0), prob=0.0) is None


def test_dataset_items(tiny_synthetic):
    items = read_cls_list(tiny_synthetic.train_list, tiny_synthetic.root)
    tr = VideoClsDataset(items, True, num_frames=4, sampling_rate=2, input_size=32, num_sample=2)
    va = VideoClsDataset(items, False, num_frames=4, sampling_rate=2, input_size=32, short_side_size=32)
    batch = cls_collate([tr[0], tr[1]])
    assert isinstance(batch, ClassifyBatch)
    clips, labels, erasures, skipped = batch.video, batch.labels, batch.erasures, batch.skipped
    assert clips.shape == (4, 3, 4, 32, 32) and labels.tolist() == [items[0][1]] * 2 + [items[1][1]] * 2
    assert clips.dtype == torch.float32 and 0 <= clips.min() and clips.max() <= 255     # pixels
    assert skipped == () and all(0 <= e[0] < 4 for e in erasures)
    assert torch.equal(tr[3][0], tr[3][0])                               # pure function of the index
    assert va[0][0].shape == (1, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="empty"):
        VideoClsDataset([], True)


def test_sparse_test_views_take_different_frames_of_each_segment():
    """Official sparse test (SSv2): view s takes the frame at (s + 0.5) / S of every segment, so
    the S views differ and interleave (`buffer[s::S]`); dense views are windows of the stride."""
    from vmae2_fast.data.clip_sampling import test_frame_indices
    sparse = test_frame_indices(64, 8, 4, 2, sparse=True)
    assert sparse.tolist() == [[2, 10, 18, 26, 34, 42, 50, 58], [6, 14, 22, 30, 38, 46, 54, 62]]
    dense = test_frame_indices(100, 4, 4, 3)
    assert dense.tolist() == [[0, 4, 8, 12], [40, 44, 48, 52], [84, 88, 92, 96]]
    assert test_frame_indices(100, 4, 4, 1).tolist() == [[40, 44, 48, 52]]   # centred; official: 1/0
