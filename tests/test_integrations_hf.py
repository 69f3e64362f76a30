"""The HF transformers drop-ins: same loss and gradients before and after patching (float32, CPU)."""
import copy

import pytest
import torch

import needs

transformers = needs.transformers()    # not installed: skip locally, fail on CI; broken: fail

from vmae2_fast import ops  # noqa: E402
from vmae2_fast.integrations import apply_to_hf_videomae, apply_to_hf_vitmae  # noqa: E402


@pytest.fixture(params=["auto", "reference"])
def backend(request):
    before = ops.active_backend()
    ops.use_backend(request.param)
    yield request.param
    ops.use_backend(before)


def _compare(model, patched, call):
    torch.manual_seed(1)
    a = call(model)
    a.loss.backward()
    torch.manual_seed(1)
    b = call(patched)
    b.loss.backward()
    assert torch.allclose(a.loss, b.loss, rtol=1e-5, atol=0), (a.loss.item(), b.loss.item())
    assert torch.allclose(a.logits, b.logits, rtol=1e-4, atol=1e-5)
    named = dict(patched.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        q = named[name]
        if p.grad is None:
            assert q.grad is None, name
            continue
        # (a key bias has a mathematically zero gradient: compare that noise absolutely)
        err = ((p.grad - q.grad).norm() / p.grad.norm().clamp_min(1e-3)).item()
        assert err < 1e-5, (name, err)
        checked += 1
    assert checked > 10


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_videomae_same_loss_and_grads(backend, norm_pix_loss):
    cfg = transformers.VideoMAEConfig(
        image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=32, use_mean_pooling=False,
        norm_pix_loss=norm_pix_loss, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    model = transformers.VideoMAEForPreTraining(cfg)
    patched = apply_to_hf_videomae(copy.deepcopy(model))
    assert apply_to_hf_videomae(patched) is patched         # a second call is a no-op
    assert patched.videomae.embeddings.forward.__func__.__name__ == "_videomae_embed"
    video = torch.randn(2, 4, 3, 32, 32)                       # (B, T, C, H, W), the HF layout
    n = 2 * 2 * 2
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[0, [0, 2, 3, 5, 6, 7]] = True
    mask[1, [1, 2, 4, 5, 6, 7]] = True
    _compare(model, patched, lambda m: m(pixel_values=video, bool_masked_pos=mask))
    assert patched.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_vitmae_same_loss_and_grads(backend, norm_pix_loss):
    cfg = transformers.ViTMAEConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=32, mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss)
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(cfg)
    patched = apply_to_hf_vitmae(copy.deepcopy(model))
    images = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)
    _compare(model, patched, lambda m: m(pixel_values=images, noise=noise))
    _compare(model, patched, lambda m: m(pixel_values=images))  # HF's own noise draw, same seed


def test_wrong_model_is_refused():
    with pytest.raises(TypeError, match="VideoMAEForPreTraining"):
        apply_to_hf_videomae(torch.nn.Linear(2, 2))
