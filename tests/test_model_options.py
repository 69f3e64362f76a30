"""The official model options (layer scale, learnable position table, qk_scale, cosine attention,
first-token pooling) against the naive re-statement of the official modules
(`vmae2_fast.testing.baseline`), in float64: classifier logits and every gradient on both
attention backends, and the pre-training loss, predictions and gradients through the fused ops
(reference and C++ backends)."""
import pytest
import torch

from vmae2_fast import ops
from vmae2_fast.masking import DualMasking, indices_to_mask
from vmae2_fast.models import from_official_config
from vmae2_fast.models.attention import set_attention_backend
from vmae2_fast.models.weights import load_classifier_weights
from vmae2_fast.testing.baseline import classifier_forward, pretrain_forward_loss

TOL = 1e-10
OPTIONS = {
    "layer_scale": dict(init_values=0.1),
    "learnable_pos": dict(use_learnable_pos_emb=True),
    "qk_scale": dict(qk_scale=0.3),
    "cos_attn": dict(cos_attn=True),
    "all": dict(init_values=0.5, use_learnable_pos_emb=True, cos_attn=True),
}
CLS = dict(img_size=32, patch_size=16, all_frames=4, tubelet_size=2, embed_dim=48, depth=2,
           num_heads=3, mlp_ratio=4.0, qkv_bias=True, num_classes=5, layer_norm_eps=1e-6)
PT = dict(img_size=32, patch_size=16, all_frames=4, tubelet_size=2, encoder_embed_dim=48,
          encoder_depth=2, encoder_num_heads=3, decoder_embed_dim=24, decoder_depth=2,
          decoder_num_heads=2, mlp_ratio=4.0, decoder_num_classes=1536, qkv_bias=True,
          layer_norm_eps=1e-6)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def perturbed(model):
    """Every parameter moved off its initial value, so gammas, cosine scales (above the clamp for
    one head), biases and norms all shape the output."""
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        p.data.add_(0.1 * torch.randn_like(p))
        if name.endswith("attn.scale"):
            p.data[0] = 5.0                       # clamped at log(100): no gradient there
    return model


def official_copy(model):
    return {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("pooling", [True, False], ids=["mean_pool", "first_token"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_classifier_option_matches_official(option, pooling, backend):
    cfg = {**CLS, **OPTIONS[option], "use_mean_pooling": pooling}
    model = perturbed(from_official_config(cfg).double()).eval()
    set_attention_backend(model, backend)
    sd = official_copy(model)
    video = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    ref = classifier_forward(sd, cfg, video)
    out = model(video)
    assert rel(out, ref) < TOL
    (ref ** 2).sum().backward()
    (out ** 2).sum().backward()
    for name, p in model.named_parameters():
        assert rel(p.grad, sd[name].grad) < TOL, name


@pytest.mark.parametrize("kernels", ["reference", "cpp"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_pretrain_option_matches_official_through_the_fused_ops(option, kernels):
    cfg = {**PT, **OPTIONS[option]}
    model = perturbed(from_official_config(cfg).double())
    sd = official_copy(model)
    video = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    vis, dec = DualMasking(model.grid, 0.75, 0.5)(2, torch.Generator().manual_seed(3))
    enc_map, dec_map = indices_to_mask(vis, model.num_tokens), indices_to_mask(dec, model.num_tokens)
    ref_loss, ref_out, _ = pretrain_forward_loss(sd, cfg, video, enc_map, dec_map)
    ref_loss.backward()
    ops.use_backend(kernels)
    try:
        loss, pred = model.forward_loss(video, vis, dec)
        loss.backward()
    finally:
        ops.use_backend("auto")
    assert abs(loss.item() - ref_loss.item()) <= TOL * abs(ref_loss.item())
    assert rel(pred, ref_out) < TOL
    for name, p in model.named_parameters():
        assert rel(p.grad, sd[name].grad) < TOL, name


def test_option_parameters_keep_official_names_and_optimiser_rules():
    from vmae2_fast.train.optim import param_groups
    model = from_official_config({**CLS, "init_values": 0.1, "cos_attn": True,
                                  "use_learnable_pos_emb": True})
    names = set(model.state_dict())
    assert {"blocks.0.gamma_1", "blocks.0.gamma_2", "blocks.0.attn.scale", "pos_embed"} <= names
    no_decay = {n for g in param_groups(model, 0.05) if g["weight_decay"] == 0 for n in g["param_names"]}
    assert {"blocks.1.gamma_1", "blocks.1.attn.scale", "pos_embed"} <= no_decay
    assert model.blocks[0].attn.scale.detach().flatten().tolist() == pytest.approx([2.302585] * 3, rel=1e-6)


def test_learned_table_loads_only_into_a_learnable_model(tmp_path):
    src = from_official_config({**CLS, "use_learnable_pos_emb": True})
    path = tmp_path / "c.pth"
    torch.save({"model": src.state_dict()}, path)
    dst = from_official_config({**CLS, "use_learnable_pos_emb": True})
    load_classifier_weights(dst, path)
    assert torch.equal(dst.pos_embed, src.pos_embed)
    with pytest.raises(ValueError, match="--learnable-pos-emb"):
        load_classifier_weights(from_official_config(CLS), path)
    bigger = from_official_config({**CLS, "use_learnable_pos_emb": True, "img_size": 48})
    load_classifier_weights(bigger, path)             # 2x2 -> 3x3 spatial, resampled
    assert bigger.pos_embed.shape == (1, 2 * 9, 48)


def test_cos_attn_with_qk_scale_is_refused():
    with pytest.raises(ValueError, match="qk_scale"):
        from_official_config({**CLS, "cos_attn": True, "qk_scale": 0.5})
