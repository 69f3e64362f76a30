"""bench/official_code.py: the timm stand-ins behave as documented, and a checkout with the
official layout (a stand-in made here; the real one is not needed) is loaded and run."""
import importlib
import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

from bench_scripts import script
from fake_official_checkout import make_fake_checkout
from vmae2_fast.masking import DualMasking
from vmae2_fast.models import build_pretrain_model
from vmae2_fast.models.zoo import model_spec

oc = script("official_code")


# ------------------------------------------------------------------ timm stand-ins


def test_drop_path_is_the_identity_when_off():
    x = torch.randn(4, 3, 5)
    assert oc.drop_path(x, 0.0, training=True) is x
    assert oc.drop_path(x, 0.3, training=False) is x


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(20000, 3, 2)
    y = oc.drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] != 0
    # a sample is all zeros or all 1/keep
    assert torch.equal(per_sample[~kept], torch.zeros_like(per_sample[~kept]))
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    # binomial(20000, 0.75): sd of the fraction is 0.003
    assert abs(kept.float().mean().item() - 0.75) < 0.015
    assert abs(y.mean().item() - 1.0) < 0.02


def test_drop_path_makes_timm_0_4_12s_decisions_from_the_same_draws():
    """timm 0.4.12 keeps a sample where floor(keep_prob + u) == 1 for its uniform draw u."""
    x = torch.randn(1000, 7)
    torch.manual_seed(3)
    u = torch.rand(1000, 1)
    expected = x / 0.6 * torch.floor(0.6 + u)
    torch.manual_seed(3)
    assert torch.equal(oc.drop_path(x, 0.4, training=True), expected)


def test_to_2tuple():
    assert oc.to_2tuple(16) == (16, 16)
    pair = (3, 4)
    assert oc.to_2tuple(pair) is pair
    assert oc.to_2tuple([5, 6]) == [5, 6]


def _truncated_normal_std(std, a, b):
    """Standard deviation of N(0, std^2) truncated to [a, b] (symmetric bounds), from the closed form."""
    alpha, beta = a / std, b / std
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: (1 + math.erf(z / math.sqrt(2))) / 2  # noqa: E731
    z = cdf(beta) - cdf(alpha)
    return std * math.sqrt(1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z)


@pytest.mark.parametrize("std,a,b", [(0.02, -0.02, 0.02), (1.0, -2.0, 2.0), (0.02, -2.0, 2.0)])
def test_trunc_normal_matches_the_truncated_normal(std, a, b):
    torch.manual_seed(0)
    t = torch.empty(200000, dtype=torch.float64)
    assert oc.trunc_normal_(t, std=std, a=a, b=b) is t
    assert t.min() >= a and t.max() <= b
    assert abs(t.mean().item()) < 0.01 * std
    assert t.std().item() == pytest.approx(_truncated_normal_std(std, a, b), rel=0.01)


def test_register_model_returns_the_function_and_records_it():
    def pretrain_videomae_test_fn():
        return 1
    assert oc.register_model(pretrain_videomae_test_fn) is pretrain_videomae_test_fn
    assert oc.MODEL_REGISTRY["pretrain_videomae_test_fn"] is pretrain_videomae_test_fn


def test_timm_shims_stand_in_while_active_and_are_removed_after(monkeypatch):
    monkeypatch.setattr(oc, "_timm_importable", lambda: False)
    with oc.timm_shims() as used:
        assert used == "stand-ins"
        from timm.data.constants import IMAGENET_DEFAULT_MEAN
        from timm.models.layers import drop_path
        assert drop_path is oc.drop_path and IMAGENET_DEFAULT_MEAN == (0.485, 0.456, 0.406)
    assert not any(n == "timm" or n.startswith("timm.") for n in sys.modules)
    importlib.util.find_spec("json")  # the import system is left working


# ------------------------------------------------------------------ loading a checkout


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(oc, "_timm_importable", lambda: False)  # exercise the stand-ins everywhere
    return make_fake_checkout(tmp_path / "VideoMAEv2")


def test_load_finds_the_pieces_and_only_the_imports_the_step_needs(checkout):
    code = oc.load_official_code(checkout)
    assert code.timm == "stand-ins" and code.repo == checkout.resolve()
    assert code.modeling_pretrain.HELPERS == (oc.drop_path, oc.to_2tuple, oc.trunc_normal_, oc.register_model)
    names = {k for k in code.step_globals if not k.startswith("__")}
    assert names == {"torch", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD"}  # `import utils` was not run
    assert "timm" not in sys.modules


def test_build_official_model_uses_the_zoo_shapes_and_takes_our_weights(checkout):
    code = oc.load_official_code(checkout)
    off = oc.build_official_model(code, "vit_micro", img_size=32, num_frames=4)
    s = model_spec("vit_micro")
    assert off.init_kwargs == dict(img_size=32, patch_size=16, encoder_embed_dim=s.embed_dim, encoder_depth=s.depth,
                                   decoder_num_classes=3 * 2 * 16 * 16, decoder_embed_dim=s.decoder_embed_dim,
                                   decoder_depth=4, mlp_ratio=s.mlp_ratio, all_frames=4, eps=1e-6)
    ours = build_pretrain_model("vit_micro", img_size=32, num_frames=4)
    off.load_state_dict(ours.state_dict(), strict=True)


def test_official_masks_are_collated_like_the_loader(checkout):
    code = oc.load_official_code(checkout)
    enc, dec = oc.OfficialMasks(code, (2, 4, 4), 0.75, 0.5)(3)
    assert enc.shape == dec.shape == (3, 2, 16) and enc.dtype == torch.float64
    assert (enc.sum(dim=(1, 2)) == 2 * 12).all()
    v1_enc, v1_dec = oc.OfficialMasks(code, (2, 4, 4), 0.75, 0.0)(3)
    assert torch.equal(v1_dec, 1 - v1_enc)  # no decoder masking: decode what the encoder masked


def test_forward_loss_runs_the_engines_loss_statements_only(checkout):
    """The loss equals vmae2_fast's on the same weights, clip and masks (so the slice ran, with
    the fp32 branch), and neither the statement before the batch unpacking nor the ones after
    the loss ran (both raise)."""
    code = oc.load_official_code(checkout)
    torch.manual_seed(0)
    ours = build_pretrain_model("vit_micro", img_size=32, num_frames=4)
    off = oc.build_official_model(code, "vit_micro", img_size=32, num_frames=4)
    off.load_state_dict(ours.state_dict(), strict=True)
    np.random.seed(0)
    enc, dec = oc.OfficialMasks(code, ours.grid, 0.75, 0.5)(2)
    video = torch.randn(2, 3, 4, 32, 32)
    loss, outputs, labels = code.forward_loss(off, (video, enc, dec), torch.device("cpu"), 16)
    expected, pred = ours.forward_loss(video, enc.flatten(1).bool(), dec.flatten(1).bool())
    assert outputs.shape == labels.shape == pred.shape
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert off.mask_token.grad is not None


def test_missing_files_name_what_to_fix(tmp_path):
    root = make_fake_checkout(tmp_path / "half", skip=("engine_for_pretraining.py",))
    with pytest.raises(FileNotFoundError, match="engine_for_pretraining.py.*OpenGVLab/VideoMAEv2"):
        oc.load_official_code(root)


@pytest.mark.parametrize("variant,message", [
    (dict(loss_test="if loss_scaler is not None"), "if loss_scaler is None"),  # the engine's layout changed
    (dict(extra_import="from not_installed_pkg import IMAGENET_DEFAULT_MEAN"), "not_installed_pkg"),  # a dependency
])
def test_a_checkout_that_cannot_run_here_is_reported(tmp_path, monkeypatch, variant, message):
    monkeypatch.setattr(oc, "_timm_importable", lambda: False)
    root = make_fake_checkout(tmp_path / "VideoMAEv2", **variant)
    with pytest.raises(ValueError, match=message):
        oc.load_official_code(root)


# ------------------------------------------------------------------ the real checkout
# The tests above run a stand-in built from our own model, so they check the loader, never the
# official arithmetic. These run the user's real files (models, mask generators, and the slice of
# engine_for_pretraining.py) where a checkout exists (`needs.official_checkout`; CI has none and
# says so in its summary).


@pytest.mark.official_checkout
def test_the_real_official_code_computes_our_loss_and_every_gradient(official_repo):
    code = oc.load_official_code(official_repo)
    assert code.repo == official_repo.resolve()
    torch.manual_seed(0)
    ours = build_pretrain_model("vit_micro", img_size=32, num_frames=4).double()
    with torch.no_grad():                  # every parameter away from its init (norms at 1, biases at 0)
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    off = oc.build_official_model(code, "vit_micro", img_size=32, num_frames=4).double()
    off.load_state_dict(ours.state_dict(), strict=True)
    enc, dec = oc.OfficialMasks(code, ours.grid, 0.75, 0.5, seed=3)(3)
    # the official generators at these ratios keep what our masking keeps (visible, decoded)
    ref = DualMasking(ours.grid, 0.75, 0.5)
    assert ((enc.flatten(1) == 0).sum(1) == ref.num_visible).all()
    assert ((dec.flatten(1) == 0).sum(1) == ref.num_decoded).all()
    video = torch.randn(3, 3, 4, 32, 32, dtype=torch.float64)
    loss, outputs, labels = code.forward_loss(off, (video, enc, dec), torch.device("cpu"), 16)
    expected, pred = ours.forward_loss(video, enc.flatten(1).bool(), dec.flatten(1).bool())
    assert abs(loss.item() - expected.item()) <= 1e-10 * abs(expected.item())
    assert ((outputs - pred).norm() / pred.norm()).item() < 1e-10
    loss.backward()
    expected.backward()
    theirs = dict(off.named_parameters())
    for name, p in ours.named_parameters():
        g = theirs[name].grad
        assert ((p.grad - g).norm() / g.norm()).item() < 1e-10, name
