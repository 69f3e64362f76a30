"""Model zoo shapes, official parameter counts, sine-cosine tables, initialisation, bad inputs."""
import math

import pytest
import torch

from vmae2_fast.testing.baseline import numpy_sinusoid
from vmae2_fast.models import (build_classifier, build_pretrain_model, count_parameters, model_spec,
                               sinusoid_table)

# official totals (videomae_v2_official.md section 1.2)
PRETRAIN_PARAMS = {"vit_s": 24.029, "vit_b": 94.211, "vit_l": 317.782, "vit_h": 645.659, "vit_g": 1026.307}
CLS_PARAMS = {"vit_s": (22.034, 22.153), "vit_b": (86.535, 86.773), "vit_l": (304.271, 304.588),
              "vit_h": (632.119, 632.517), "vit_g": (1012.174, 1012.611)}


@pytest.mark.parametrize("name", list(PRETRAIN_PARAMS))
def test_parameter_counts_equal_official(name):
    with torch.device("meta"):  # shapes only: ViT-g does not need 4 GB here
        pre = build_pretrain_model(name)
        c400, c710 = build_classifier(name, 400), build_classifier(name, 710)
    assert round(count_parameters(pre) / 1e6, 3) == PRETRAIN_PARAMS[name]
    assert round(count_parameters(c400) / 1e6, 3) == CLS_PARAMS[name][0]
    assert round(count_parameters(c710) / 1e6, 3) == CLS_PARAMS[name][1]


def test_giant_shapes():
    with torch.device("meta"):
        g = build_pretrain_model("vit_g")
    assert g.decoder.blocks[0].mlp.fc1.out_features == 2234
    assert g.encoder.blocks[0].mlp.fc1.out_features == 6144
    assert g.decoder.head.out_features == 1176
    assert g.num_tokens == 2048 and g.encoder.blocks[0].attn.head_dim == 88


@pytest.mark.parametrize("n,d", [(32, 16), (98, 88), (50, 7)])
def test_sinusoid_table_equals_official_construction(n, d):
    assert torch.equal(sinusoid_table(n, d), numpy_sinusoid(n, d))


def test_position_tables_are_device_buffers():
    m = build_pretrain_model("vit_s", img_size=32, num_frames=4)
    names = dict(m.named_buffers())
    assert "pos_embed" in names and "encoder.pos_embed" in names
    assert m.double().pos_embed.dtype == torch.float64  # follows the module like any buffer


def test_pretrain_initialisation_follows_official():
    torch.manual_seed(0)
    m = build_pretrain_model("vit_s", img_size=64, num_frames=4)
    assert m.mask_token.abs().max() <= 0.02 and m.mask_token.std() > 0.005   # truncated at +-1 sigma
    w = m.encoder.blocks[0].mlp.fc1.weight                                       # xavier uniform
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(m.encoder.blocks[0].mlp.fc1.bias == 0)
    e2d = m.encoder_to_decoder.weight                                            # PyTorch default
    assert abs(e2d.std().item() - 1 / math.sqrt(3 * e2d.shape[1])) < 0.1 / math.sqrt(3 * e2d.shape[1])
    conv = m.encoder.patch_embed.proj.weight                                     # PyTorch default
    fan_in = conv[0].numel()
    assert conv.abs().max() <= 1 / math.sqrt(fan_in)


def test_classifier_initialisation_follows_official():
    torch.manual_seed(0)
    c = build_classifier("vit_s", 400, img_size=32, num_frames=4)
    assert abs(c.head.weight.std().item() - 2e-5) < 4e-6                          # 0.02 * init_scale
    assert abs(c.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.002
    assert isinstance(c.norm, torch.nn.Identity) and c.fc_norm is not None
    keys = set(c.state_dict())
    assert {"fc_norm.weight", "head.weight", "patch_embed.proj.weight"} <= keys and "norm.weight" not in keys


def test_bad_inputs_are_reported_clearly():
    with pytest.raises(ValueError, match="unknown model"):
        model_spec("vit_xxl")
    with pytest.raises(ValueError, match="not divisible by the patch"):
        build_pretrain_model("vit_s", img_size=100)
    with pytest.raises(ValueError, match="tubelet"):
        build_pretrain_model("vit_s", img_size=32, num_frames=5)
    m = build_pretrain_model("vit_s", img_size=32, num_frames=4)
    with pytest.raises(ValueError, match="expected video of shape"):
        m.forward_loss(torch.randn(1, 3, 4, 48, 48), torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("model_name", ["vit_micro", "vit_s"])
def test_attention_backends_agree_in_values_and_gradients(model_name):
    """The one attention call site: SDPA (the default) and the official explicit softmax give the
    same outputs and gradients (float64), and the backend is set for every block at once."""
    from vmae2_fast.models.attention import Attention, set_attention_backend
    torch.manual_seed(0)
    model = build_classifier(model_name, 3, img_size=32, num_frames=4).double()
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    results = []
    for backend in ("math", "sdpa"):
        set_attention_backend(model, backend)
        assert {m.backend for m in model.modules() if isinstance(m, Attention)} == {backend}
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    for x1, x2 in zip(ga, gb):
        assert torch.allclose(x1, x2, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend(model, "flash9")
