"""Clips cross to the device as pixels and the stage normalises them there: the model's input is
the official function (pre-training: the uint8 crops normalised to float rounding of a float64
truth; the classification views: the host normalisation bit for bit, the same noise in the same
boxes)."""
import copy

import numpy as np
import pytest
import torch

from vmae2_fast.data.batches import ClassifyBatch
from vmae2_fast.data.clip_sampling import random_erasing_box
from vmae2_fast.data.lists import read_cls_list
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast.data.pyav import classify as pyav_classify
from vmae2_fast.data.pyav import pretrain as pyav_pretrain
from vmae2_fast.data.pyav.classify import VideoClsDataset, VideoTestDataset, cls_collate
from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset
from vmae2_fast.data.lists import read_list
from vmae2_fast.data.transforms import crop_resize, normalize


# The official engine's statistics (timm.data.constants IMAGENET_DEFAULT_MEAN / _STD), written out
# here rather than read from vmae2_fast.constants: a wrong constant there must not be its own truth.
OFFICIAL_MEAN = (0.485, 0.456, 0.406)
OFFICIAL_STD = (0.229, 0.224, 0.225)


def float64_truth(x: torch.Tensor) -> torch.Tensor:
    """ToTensor (x / 255) then Normalize, in float64."""
    mean = torch.tensor(OFFICIAL_MEAN, dtype=torch.float64).view(1, 3, 1, 1, 1)
    std = torch.tensor(OFFICIAL_STD, dtype=torch.float64).view(1, 3, 1, 1, 1)
    return (x.double() / 255 - mean) / std


def test_normalisation_is_imagenet_in_the_requested_dtype():
    x = torch.randint(0, 256, (2, 3, 4, 5, 6), dtype=torch.uint8)
    out = normalize_on_device(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert (out.double() - float64_truth(x)).abs().max() < 1e-6
    as_float = normalize_on_device(x.float())                   # float pixels: the same function
    assert (as_float - out).abs().max() < 1e-6
    bf16 = normalize_on_device(x, torch.bfloat16)               # rounded once, from float32
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, out.to(torch.bfloat16))
    with pytest.raises(ValueError, match="N, 3, T, H, W"):
        normalize_on_device(x[0])
    with pytest.raises(ValueError, match="uint8 or float"):
        normalize_on_device(x.to(torch.int32))


def test_cpu_normalisation_slab_by_slab_is_the_same_arithmetic():
    """The CPU path (one slab per clip and channel, scalar constants, NumPy-allocated output)
    computes ``x * scale + bias`` in float32 exactly as the broadcast formula does, from any
    input layout, into a contiguous tensor of its own; float views give ``(x - m) / s``."""
    from vmae2_fast.data.pixels import norm_affine, norm_pixels
    base = torch.randint(0, 256, (3, 6, 5, 17, 40), dtype=torch.uint8)
    x = base.permute(0, 1, 2, 4, 3)[:, ::2, :, ::2]             # (3, 3, 5, 20, 17), not contiguous
    assert not x.is_contiguous()
    scale, bias = norm_affine("cpu")
    out = normalize_on_device(x)
    assert out.is_contiguous() and torch.equal(out, x.float() * scale + bias)
    assert (out.double() - float64_truth(x)).abs().max() < 1e-6
    assert torch.equal(normalize_on_device(x, torch.bfloat16), out.to(torch.bfloat16))
    kept = out.clone()
    base.zero_()                                                # the output shares nothing with the input
    assert torch.equal(out, kept)
    views = torch.rand(2, 3, 4, 6, 7) * 255
    mean255, std255 = norm_pixels("cpu")
    assert torch.equal(normalize_on_device(views), (views - mean255) / std255)


def test_pretraining_input_is_the_normalised_crops_of_its_boxes(tiny_synthetic, monkeypatch):
    """The PyAV pre-training item is the uint8 crops of the frames it decoded at the boxes it drew;
    normalised on the device it is the float64 ImageNet normalisation of those crops, to float32
    rounding."""
    seen = {"boxes": []}
    decode, box = pyav_pretrain.decode_clip, pyav_pretrain.multiscale_crop_box
    monkeypatch.setattr(pyav_pretrain, "decode_clip",
                        lambda path, idx, *a, **kw: seen.setdefault("frames", decode(path, idx, *a, **kw)))
    monkeypatch.setattr(pyav_pretrain, "multiscale_crop_box",
                        lambda *a: seen["boxes"].append(box(*a)) or seen["boxes"][-1])
    entries = read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root)
    ds = PretrainVideoDataset(entries, num_frames=4, sampling_rate=2, input_size=32, num_sample=2, seed=3)
    clips, skipped = ds[2]
    assert clips.dtype == torch.uint8 and clips.shape == (2, 3, 4, 32, 32) and skipped == []
    crops = torch.stack([crop_resize(seen["frames"], b, 32) for b in seen["boxes"]])
    assert len(seen["boxes"]) == 2 and torch.equal(clips, crops)
    assert (normalize_on_device(clips).double() - float64_truth(crops)).abs().max() < 1e-6


def test_classification_views_and_erasing_equal_the_host_path(tiny_synthetic, monkeypatch):
    """Training views: pixels + erasing boxes, normalised and erased on the device, equal bit for
    bit the official host order (normalise, then timm's cube RandomErasing with the generator at
    the same point: its rectangle, then its N(0, 1) noise): the same boxes, the same noise, the
    same values."""
    states = []
    real = pyav_classify.draw_cube_erasure

    def recording(t, h, w, rng, prob):
        states.append(copy.deepcopy(rng))                       # the generator before the draw
        return real(t, h, w, rng, prob)

    monkeypatch.setattr(pyav_classify, "draw_cube_erasure", recording)
    items = read_cls_list(tiny_synthetic.train_list, tiny_synthetic.root)
    ds = VideoClsDataset(items, True, num_frames=4, sampling_rate=2, input_size=32, num_sample=2,
                         reprob=1.0, aa="rand-m7-n2-mstd0.5-inc1", seed=5)
    batch = [ds[0], ds[3]]
    out = cls_collate(batch)
    assert isinstance(out, ClassifyBatch)
    pixels, erasures = out.video, out.erasures
    assert pixels.dtype == torch.float32 and len(states) == 4 and len(erasures) >= 3
    assert sorted(e[0] for e in erasures) == sorted(set(e[0] for e in erasures))    # one per view
    got = normalize_on_device(pixels, erase=erasures)

    def host_erasing(x, rng):                   # timm's cube RandomErasing on a normalised clip
        box = random_erasing_box(x.shape[-2], x.shape[-1], rng, 1.0)
        if box is not None:
            y0, x0, h, w = box
            x[:, :, y0:y0 + h, x0:x0 + w] = torch.from_numpy(
                rng.standard_normal((3, x.shape[1], h, w)).astype(np.float32))
        return x
    want = torch.stack([host_erasing(normalize(v.permute(1, 0, 2, 3)), rng) for v, rng in zip(pixels, states)])
    assert torch.equal(got, want)
    for i, y0, x0, h, w, noise in erasures:                     # the noise itself is exact
        assert torch.equal(got[i, :, :, y0:y0 + h, x0:x0 + w], noise)


def test_validation_and_test_views_are_pixels(tiny_synthetic):
    """Evaluation views cross as float32 pixels (their resize is on floats); normalised on the
    device they equal the host normalisation (`transforms.normalize`), bit for bit."""
    items = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)
    val = VideoClsDataset(items, False, num_frames=4, sampling_rate=2, input_size=32, short_side_size=40)
    views = torch.cat([val[0][0], VideoTestDataset(items, 4, 2, 32, 40, segments=2, crops=3)[0][0]])
    assert views.shape == (7, 3, 4, 32, 32) and views.dtype == torch.float32
    assert 0 <= views.min() and views.max() < 255.01 and views.max() > 1    # pixels, not normalised
    host = torch.stack([normalize(v.permute(1, 0, 2, 3)) for v in views])
    assert torch.equal(normalize_on_device(views), host)


@pytest.mark.parametrize("cached_first", [True, False])
def test_a_fake_batch_is_normalised_without_memory(cached_first, monkeypatch):
    """The memory planner traces the step with fake tensors (its FakeTensorMode): the host path's
    NumPy buffer would be a real allocation of the planned batch (90 GiB for ViT-g's) that the
    trace cannot see; and the constants made inside the trace must not be cached for real runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode, is_fake
    import vmae2_fast.data.pixels as pixels
    monkeypatch.setattr(pixels, "_AFFINE", {})
    real = torch.randint(0, 256, (1, 3, 2, 4, 4), dtype=torch.uint8)
    if cached_first:
        want = normalize_on_device(real)
    with FakeTensorMode(allow_non_fake_inputs=True):
        video = torch.empty(1024, 3, 16, 1024, 1024, dtype=torch.uint8)     # 48 GiB as float32
        out = normalize_on_device(video, torch.float32)
    assert is_fake(out) and out.shape == video.shape and out.dtype == torch.float32
    got = normalize_on_device(real)                 # after the trace: real constants, same numbers
    assert not is_fake(got) and not any(is_fake(t) for pair in pixels._AFFINE.values() for t in pair)
    if cached_first:
        assert torch.equal(got, want)
