"""Loading every checkpoint layout into the classifier; plain-words reports; HF export."""
import argparse
import json

import pytest
import torch

import needs
from vmae2_fast.models.weights import (CheckpointMismatchError, interpolate_pos_table,
                                   load_classifier_weights)
from vmae2_fast.models import build_classifier, build_pretrain_model, sinusoid_table


def micro_pretrain(num_frames=4):
    torch.manual_seed(0)
    return build_pretrain_model("vit_micro", img_size=32, num_frames=num_frames)


def encoder_weights(pt):
    return {k[len("encoder."):]: v for k, v in pt.state_dict().items()
            if k.startswith("encoder.") and not k.startswith("encoder.norm")}


def assert_encoder_loaded(clf, pt):
    sd = clf.state_dict()
    for k, v in encoder_weights(pt).items():
        assert torch.equal(sd[k], v), k


@pytest.mark.parametrize("layout", ["model", "module", "bare", "orig_mod", "backbone", "ddp"])
def test_every_layout_loads(tmp_path, layout):
    pt = micro_pretrain()
    sd = pt.state_dict()
    if layout == "orig_mod":
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    if layout == "backbone":
        sd = {"backbone." + k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    if layout == "ddp":
        sd = {"module._orig_mod." + k: v for k, v in sd.items()}
    obj = {"model": sd} if layout in ("model", "orig_mod", "backbone") else \
        {"module": sd} if layout == "module" else sd
    torch.save(obj, tmp_path / "c.pth")
    clf = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    report = load_classifier_weights(clf, tmp_path / "c.pth")
    assert_encoder_loaded(clf, pt)
    assert report.head == "fresh"
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias"}
    if layout not in ("backbone",):
        assert report.dropped_decoder > 0
    assert "freshly initialised" in report.summary()


def test_official_checkpoint_with_namespace_loads_safely(tmp_path):
    pt = micro_pretrain()
    torch.save({"model": pt.state_dict(), "args": argparse.Namespace(lr=1.0)}, tmp_path / "off.pth")
    clf = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no "unpickling code" warning: weights_only
        load_classifier_weights(clf, tmp_path / "off.pth")
    assert_encoder_loaded(clf, pt)


def test_other_frame_count_rebuilds_the_sinusoid(tmp_path):
    """An 8-frame stage-1 encoder into a 16-frame, 48-px classifier: every weight loads and the
    position table is the sinusoid of the new 8x3x3 grid (nothing to interpolate)."""
    pt = micro_pretrain(num_frames=8)
    torch.save({"model": pt.state_dict()}, tmp_path / "c.pth")
    clf = build_classifier("vit_micro", 6, img_size=48, num_frames=16)
    load_classifier_weights(clf, tmp_path / "c.pth")
    assert_encoder_loaded(clf, pt)
    assert torch.equal(clf.pos_embed, sinusoid_table(8 * 3 * 3, 64))
    assert clf(torch.randn(1, 3, 16, 48, 48)).shape == (1, 6)


def test_stored_tables(tmp_path):
    pt = micro_pretrain()
    sd = dict(pt.state_dict())
    clf = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    sd["encoder.pos_embed"] = sinusoid_table(8, 64)
    torch.save({"model": sd}, tmp_path / "a.pth")
    assert any("pos_embed" in k for k in load_classifier_weights(clf, tmp_path / "a.pth").unexpected)
    sd["encoder.pos_embed"] = torch.randn(1, 8, 64)
    torch.save({"model": sd}, tmp_path / "b.pth")
    with pytest.raises(CheckpointMismatchError, match="learned position table"):
        load_classifier_weights(clf, tmp_path / "b.pth")


def test_interpolate_pos_table():
    t = torch.randn(1, 2 * 3 * 3, 8)
    assert interpolate_pos_table(t, (2, 3, 3), (2, 3, 3)) is t
    # A table linear in (t, h, w) stays linear: trilinear resampling reproduces it exactly inside.
    g = torch.stack(torch.meshgrid(torch.arange(4.), torch.arange(4.), torch.arange(4.), indexing="ij"), -1)
    lin = (g @ torch.tensor([1.0, 2.0, 3.0])).reshape(1, 64, 1)
    out = interpolate_pos_table(lin, (4, 4, 4), (8, 4, 4))
    assert out.shape == (1, 128, 1)
    assert out.reshape(8, 4, 4)[:, 0, 0][[1, 3, 5]].tolist() == pytest.approx([0.25, 1.25, 2.25])


def test_wrong_model_size_is_refused_before_anything_loads(tmp_path):
    torch.save({"model": micro_pretrain().state_dict()}, tmp_path / "c.pth")
    clf = build_classifier("vit_s", 6, img_size=32, num_frames=4)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"width 64, 2 blocks.*--model vit_micro.*width 384"):
        load_classifier_weights(clf, tmp_path / "c.pth")
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())


def test_head_map_selects_rows(tmp_path):
    src = build_classifier("vit_micro", 10, img_size=32, num_frames=4)
    torch.save({"model": src.state_dict()}, tmp_path / "c.pth")
    (tmp_path / "map.json").write_text(json.dumps([7, 2, 5]))
    dst = build_classifier("vit_micro", 3, img_size=32, num_frames=4)
    rep = load_classifier_weights(dst, tmp_path / "c.pth", head_map=tmp_path / "map.json")
    assert rep.head == "remapped"
    assert torch.equal(dst.head.weight, src.head.weight[[7, 2, 5]])
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    with pytest.raises(CheckpointMismatchError, match="maps 2 classes but the model has 3"):
        load_classifier_weights(dst, tmp_path / "c.pth", head_map=tmp_path / "bad.json")


def test_hf_export_gives_the_same_logits(tmp_path):
    needs.module("safetensors")          # not installed: skip locally, fail on CI; broken: fail
    hf_cls = needs.transformers().VideoMAEForVideoClassification
    from vmae2_fast.integrations.hf_export import export_to_hf
    torch.manual_seed(0)
    ours = build_classifier("vit_micro", 5, img_size=32, num_frames=4).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2)
    export_to_hf(ours, tmp_path / "hf", [f"c{i}" for i in range(5)])
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["use_mean_pooling"] is True
    theirs = hf_cls.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        a = ours(x)
        b = theirs(pixel_values=x.permute(0, 2, 1, 3, 4)).logits     # HF: (B, T, C, H, W)
    # HF's fc_norm has eps 1e-5 (ours 1e-6): the only difference.
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
    assert theirs.config.id2label[4] == "c4"
