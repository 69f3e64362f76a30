"""Parity with the official VideoMAE V2 code: golden fixtures (float64) and an independent
naive re-statement of the official computation at other shapes."""
from pathlib import Path

import pytest
import torch

from vmae2_fast.testing.baseline import pretrain_forward_loss
from vmae2_fast.masking import DualMasking, indices_to_mask
from vmae2_fast.models import from_official_config

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-10


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def pretrain_fixture():
    return torch.load(FIX / "pretrain_parity.pt", weights_only=False)


def build_pretrain(fx):
    model = from_official_config(fx["config"]).double()
    model.load_state_dict(fx["state_dict"], strict=True)
    return model


def test_state_dict_keys_are_official(pretrain_fixture):
    model = from_official_config(pretrain_fixture["config"])
    assert set(model.state_dict()) == set(pretrain_fixture["state_dict"])
    # the position tables are buffers but not persistent, as in the official state dict
    assert "pos_embed" not in model.state_dict() and "encoder.pos_embed" not in model.state_dict()


@pytest.mark.parametrize("as_index", [False, True])
def test_pretrain_loss_pred_and_every_gradient(pretrain_fixture, as_index):
    fx = pretrain_fixture
    model = build_pretrain(fx)
    enc, dec = fx["encoder_mask"], fx["decoder_mask"]
    if as_index:  # the same masks as index tensors: visible tokens, decoded tokens
        enc = (~enc).nonzero()[:, 1].view(enc.shape[0], -1)
        dec = (~dec).nonzero()[:, 1].view(dec.shape[0], -1)
    loss, pred = model.forward_loss(fx["video"], enc, dec)
    assert abs(loss.item() - fx["loss"].item()) <= TOL * abs(fx["loss"].item())
    assert pred.shape == fx["output"].shape
    assert rel(pred, fx["output"]) < TOL
    loss.backward()
    for name, p in model.named_parameters():
        assert rel(p.grad, fx["grads"][name]) < TOL, name
    assert set(fx["grads"]) == {n for n, _ in model.named_parameters()}


def test_targets_equal_official_labels(pretrain_fixture):
    from vmae2_fast.masking import as_indices
    from vmae2_fast.ops import normalized_targets
    fx = pretrain_fixture
    cfg = fx["config"]
    tgt = normalized_targets(fx["video"], as_indices(fx["decoder_mask"]), cfg["patch_size"], cfg["tubelet_size"])
    assert rel(tgt, fx["labels"]) < TOL


def test_classifier_logits():
    fx = torch.load(FIX / "classifier_parity.pt", weights_only=False)
    model = from_official_config(fx["config"]).double().eval()
    model.load_state_dict(fx["state_dict"], strict=True)
    with torch.no_grad():
        logits = model(fx["video"])
    assert rel(logits, fx["logits"]) < TOL


# The held-out fixture's shape family: patch 14, head dim 88, MLP ratio 48/11, encoder ratio 0.9,
# two decoder blocks; plus decoder ratio 0 (V1) and a second running-cell ratio.
HELD_OUT_LIKE = dict(img_size=56, patch_size=14, all_frames=4, tubelet_size=2, encoder_embed_dim=176,
                     encoder_depth=2, encoder_num_heads=2, decoder_embed_dim=88, decoder_depth=2,
                     decoder_num_heads=1, mlp_ratio=48 / 11, decoder_num_classes=1176, qkv_bias=True,
                     layer_norm_eps=1e-6, encoder_mask_ratio=0.9, decoder_mask_ratio=0.5)


@pytest.mark.parametrize("dec_ratio", [0.5, 0.0, 0.75])
def test_against_naive_official_formulation(dec_ratio):
    torch.manual_seed(0)
    cfg = dict(HELD_OUT_LIKE, decoder_mask_ratio=dec_ratio)
    model = from_official_config(cfg).double()
    for p in model.parameters():  # non-trivial biases / norms so every term is exercised
        p.data.add_(0.05 * torch.randn_like(p))
    sd = {k: v.clone().requires_grad_(True) for k, v in model.state_dict().items()}
    video = torch.randn(3, 3, 4, 56, 56, dtype=torch.float64)
    vis, dec = DualMasking(model.grid, 0.9, dec_ratio)(3)
    n = model.num_tokens
    enc_map, dec_map = indices_to_mask(vis, n), indices_to_mask(dec, n)
    ref_loss, ref_out, _ = pretrain_forward_loss(sd, cfg, video, enc_map, dec_map)
    ref_loss.backward()
    loss, pred = model.forward_loss(video, enc_map, dec_map if dec_ratio > 0 else None)
    loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= TOL * abs(ref_loss.item())
    assert rel(pred, ref_out) < TOL
    for name, p in model.named_parameters():
        assert rel(p.grad, sd[name].grad) < TOL, name


def test_v1_loss_equals_plain_mse_over_masked_tokens():
    torch.manual_seed(1)
    cfg = dict(HELD_OUT_LIKE, decoder_mask_ratio=0.0)
    model = from_official_config(cfg).double()
    video = torch.randn(2, 3, 4, 56, 56, dtype=torch.float64)
    vis, dec = DualMasking(model.grid, 0.9, 0.0)(2)
    loss, pred = model.forward_loss(video, vis, dec)
    from vmae2_fast.ops import normalized_targets
    tgt = normalized_targets(video, dec, 14, 2)
    assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, tgt), rtol=1e-12)
