"""The reference ops against the official order of operations (conv on every token, then gather;
full-size position tables indexed by boolean maps; targets for every token, then select)."""
import pytest
import torch
import torch.nn.functional as F

from vmae2_fast.testing.baseline import MEAN, STD
from vmae2_fast.ops import reference as R
from vmae2_fast.masking import DualMasking, indices_to_mask

SHAPES = [  # (B, T, H, tubelet, p, C)
    (2, 4, 32, 2, 16, 24),
    (1, 4, 28, 2, 14, 88),
    (3, 8, 56, 2, 14, 40),
]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("B,T,H,t,p,C", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_visible_patch_embed_equals_conv_then_gather(B, T, H, t, p, C, contiguous):
    torch.manual_seed(0)
    video = torch.randn(B, 3, T, H, H, dtype=torch.float64)
    if not contiguous:  # a channels-last style permuted view
        video = video.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
    weight = torch.randn(C, 3, t, p, p, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(C, dtype=torch.float64, requires_grad=True)
    grid = (T // t, H // p, H // p)
    n = grid[0] * grid[1] * grid[2]
    pos = torch.randn(1, n, C, dtype=torch.float32)
    vis, _ = DualMasking(grid, 0.5 if grid[1] == 2 else 0.75, 0.5)(B, torch.Generator().manual_seed(1))
    mask = indices_to_mask(vis, n)
    full = F.conv3d(video, weight, bias, stride=(t, p, p)).flatten(2).transpose(1, 2) + pos.double()
    expected = full[~mask].reshape(B, -1, C)
    got = R.visible_patch_embed(video, weight, bias, pos, vis, t)
    assert rel(got, expected) < 1e-12
    g = torch.randn_like(expected)
    gw, gb = torch.autograd.grad(expected, (weight, bias), g)
    hw, hb = torch.autograd.grad(got, (weight, bias), g)
    assert rel(hw, gw) < 1e-12 and rel(hb, gb) < 1e-12


@pytest.mark.parametrize("dec_ratio", [0.5, 0.0])
def test_decoder_input_equals_official_boolean_form(dec_ratio):
    torch.manual_seed(0)
    grid, B, Ce, Cd = (4, 4, 4), 3, 20, 12
    n = 64
    vis, dec = DualMasking(grid, 0.75, dec_ratio)(B, torch.Generator().manual_seed(2))
    z = torch.randn(B, vis.shape[1], Ce, dtype=torch.float64)
    w = torch.randn(Cd, Ce, dtype=torch.float64)
    tok = torch.randn(1, 1, Cd, dtype=torch.float64)
    pos = torch.randn(1, n, Cd)
    pe = pos.expand(B, -1, -1).double()
    mask, dmask = indices_to_mask(vis, n), indices_to_mask(dec, n)
    expected = torch.cat([z @ w.T + pe[~mask].reshape(B, -1, Cd), tok + pe[~dmask].reshape(B, -1, Cd)], 1)
    assert rel(R.decoder_input(z, w, pos, vis, dec, tok), expected) < 1e-14


@pytest.mark.parametrize("p,normalize", [(16, True), (14, True), (14, False)])
def test_targets_equal_full_then_select(p, normalize):
    torch.manual_seed(0)
    B, T, H, t = 2, 4, 2 * p, 2
    video = torch.randn(B, 3, T, H, H, dtype=torch.float64)
    grid = (T // t, H // p, H // p)
    n = grid[0] * grid[1] * grid[2]
    _, dec = DualMasking(grid, 0.5, 0.5)(B, torch.Generator().manual_seed(0))
    un = video * STD.view(1, 3, 1, 1, 1) + MEAN.view(1, 3, 1, 1, 1)
    sq = un.reshape(B, 3, T // t, t, H // p, p, H // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, n, -1, 3)
    if normalize:
        sq = (sq - sq.mean(-2, keepdim=True)) / (sq.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    full = sq.reshape(B, n, -1)
    expected = full[~indices_to_mask(dec, n)].reshape(B, -1, full.shape[-1])
    assert rel(R.normalized_targets(video, dec, p, t, normalize), expected) < 1e-14


def test_targets_are_float32_for_low_precision_video():
    video = torch.randn(1, 3, 2, 16, 16).to(torch.bfloat16)
    idx = torch.tensor([[0, 2]])
    assert R.normalized_targets(video, idx, 8, 2).dtype == torch.float32


def test_masked_mse_weights_and_denominator():
    torch.manual_seed(0)
    B, n = 2, 32
    video = torch.randn(B, 3, 4, 32, 32, dtype=torch.float64)
    vis, dec = DualMasking((2, 4, 4), 0.75, 0.5)(B, torch.Generator().manual_seed(4))
    pred = torch.randn(B, dec.shape[1], 384, dtype=torch.float64, requires_grad=True)
    loss = R.masked_mse(pred, video, vis, dec, 8, 2)
    tgt = R.normalized_targets(video, dec, 8, 2)
    w = indices_to_mask(vis, n)[~indices_to_mask(dec, n)].view(B, -1).double()
    expected = (((pred - tgt) ** 2).mean(-1) * w).sum() / w.sum()
    assert torch.allclose(loss, expected, rtol=1e-14)
    loss.backward()
    assert torch.all(pred.grad[w == 0] == 0)  # encoder-visible predictions get no gradient
