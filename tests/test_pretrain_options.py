"""Two README claims where we deliberately differ from the official code, checked against an
official-style computation (vmae2_fast.testing.baseline, written without our models or ops):

- tubelets other than 2 work (the official target reshape assumes 2);
- `--normalize-target` can really be switched off (the official flag cannot be).

Each is checked on the model at float64 and through the CLI: the first loss a real run logs
equals the official-style loss of the batch, masks and weights that run used (lr 0, so the
weights it leaves behind are the ones step 1 saw).
"""
from pathlib import Path

import pytest
import torch

from cli_runs import FROZEN_LR, FirstBatchSpy, micro_flags, train_records
from test_parity import HELD_OUT_LIKE, TOL, rel
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast.masking import DualMasking, indices_to_mask
from vmae2_fast.models import from_official_config
from vmae2_fast.pretrain import main
from vmae2_fast.stages.pretrain import PretrainStage
from vmae2_fast.testing.baseline import MEAN, STD, pretrain_forward_loss
from vmae2_fast.models.weights import read_checkpoint as load_checkpoint


def official_loss(sd, cfg, video, vis, dec, normalize=True):
    """The official-style loss; without normalisation the target is the [0, 1] pixels of each
    cube in the official (t, row, col, channel) layout, written out here by hand."""
    n = video.shape[2] // cfg["tubelet_size"] * (video.shape[3] // cfg["patch_size"]) ** 2
    enc_map, dec_map = indices_to_mask(vis, n), indices_to_mask(dec, n)
    loss, pred, _ = pretrain_forward_loss(sd, cfg, video, enc_map, dec_map)
    if normalize:
        return loss, pred
    t, p = cfg["tubelet_size"], cfg["patch_size"]
    B, C, T, H, W = video.shape
    pixels = video * STD.view(1, 3, 1, 1, 1) + MEAN.view(1, 3, 1, 1, 1)
    cubes = pixels.reshape(B, C, T // t, t, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
    target = cubes.reshape(B, n, -1)[~dec_map].reshape(B, -1, t * p * p * C)
    weight = enc_map[~dec_map].reshape(B, -1).double()
    return (((pred - target) ** 2).mean(-1) * weight).sum() / weight.sum(), pred


@pytest.mark.parametrize("tubelet", [1, 4])
@pytest.mark.parametrize("normalize", [True, False])
def test_model_loss_and_gradients_equal_the_official_computation(tubelet, normalize):
    torch.manual_seed(tubelet)
    cfg = dict(HELD_OUT_LIKE, tubelet_size=tubelet, decoder_num_classes=3 * tubelet * 14 * 14,
               normalize_target=normalize)
    model = from_official_config(cfg).double()
    for q in model.parameters():
        q.data.add_(0.05 * torch.randn_like(q))
    sd = {k: v.clone().requires_grad_(True) for k, v in model.state_dict().items()}
    video = torch.randn(2, 3, 4, 56, 56, dtype=torch.float64)
    vis, dec = DualMasking(model.grid, 0.9, 0.5)(2)
    ref_loss, ref_pred = official_loss(sd, cfg, video, vis, dec, normalize)
    ref_loss.backward()
    loss, pred = model.forward_loss(video, vis, dec)
    loss.backward()
    assert model.grid == (4 // tubelet, 4, 4)
    assert abs(loss.item() - ref_loss.item()) <= TOL * abs(ref_loss.item())
    assert rel(pred, ref_pred) < TOL
    for name, q in model.named_parameters():
        assert rel(q.grad, sd[name].grad) < TOL, name


@pytest.mark.parametrize("flags", [{}, {"normalize_target": False}, {"tubelet_size": 4},
                                   {"tubelet_size": 1, "normalize_target": False}],
                         ids=["defaults", "no-normalize-target", "tubelet-4", "tubelet-1-raw"])
def test_first_logged_loss_of_a_cli_run_is_the_official_loss(tiny_synthetic, tmp_path, monkeypatch,
                                                             flags):
    spy = FirstBatchSpy(monkeypatch, PretrainStage)
    out = tmp_path / "run"
    argv = micro_flags(tiny_synthetic, out, max_steps=1, progress=False, **FROZEN_LR, **flags)
    assert main(argv) == 0
    logged = train_records(out)[0]["loss"]

    ckpt = load_checkpoint(Path(out) / "checkpoint-last.pth")
    assert ckpt["config"]["normalize_target"] is flags.get("normalize_target", True)
    tubelet = flags.get("tubelet_size", 2)
    cfg = dict(patch_size=16, tubelet_size=tubelet, encoder_depth=2, encoder_num_heads=2,
               decoder_depth=4, decoder_num_heads=2, layer_norm_eps=1e-6)
    sd = {k: v.double() for k, v in ckpt["model"].items()}
    video = normalize_on_device(spy.batch.video).double()     # what the stage gives the model
    gen = torch.Generator().manual_seed(0)
    gen.set_state(spy.mask_state)                   # the run's masks, drawn again
    vis, dec = DualMasking((4 // tubelet, 2, 2), 0.75, 0.5)(video.shape[0], gen)
    truth, _ = official_loss(sd, cfg, video, vis, dec, flags.get("normalize_target", True))
    assert logged == pytest.approx(truth.item(), rel=1e-5)
    # and the option matters for this batch: the other setting gives another loss
    other, _ = official_loss(sd, cfg, video, vis, dec, not flags.get("normalize_target", True))
    assert abs(other.item() - truth.item()) > 1e-3 * truth.item()
