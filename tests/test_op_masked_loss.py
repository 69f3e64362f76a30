"""ops.masked_mse: the targets against the official order (targets for every token, then select),
the token weighting and denominator, and every backend against the float64 reference (values and
gradients), as a registered op (opcheck), and on CUDA (`gpu`)."""
import zlib

import pytest
import torch

from op_cases import (CASES, FUSED, TILE_CASES, Case, assert_close, check_mse, dtypes_for,
                      enable_interpreter, make_inputs, use)
from vmae2_fast import ops
from vmae2_fast.constants import IMAGENET_MEAN, IMAGENET_STD
from vmae2_fast.masking import DualMasking, indices_to_mask
from vmae2_fast.ops import masked_loss
from vmae2_fast.testing.baseline import MEAN, STD

enable_interpreter()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


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
    assert rel(masked_loss.normalized_targets(video, dec, p, t, normalize), expected) < 1e-14


def test_targets_are_float32_for_low_precision_video():
    video = torch.randn(1, 3, 2, 16, 16).to(torch.bfloat16)
    idx = torch.tensor([[0, 2]])
    assert masked_loss.normalized_targets(video, idx, 8, 2).dtype == torch.float32


def test_reference_weights_and_denominator():
    torch.manual_seed(0)
    B, n = 2, 32
    video = torch.randn(B, 3, 4, 32, 32, dtype=torch.float64)
    vis, dec = DualMasking((2, 4, 4), 0.75, 0.5)(B, torch.Generator().manual_seed(4))
    pred = torch.randn(B, dec.shape[1], 384, dtype=torch.float64, requires_grad=True)
    loss = masked_loss.reference(pred, video, vis, dec, 8, 2)
    tgt = masked_loss.normalized_targets(video, dec, 8, 2)
    w = indices_to_mask(vis, n)[~indices_to_mask(dec, n)].view(B, -1).double()
    expected = (((pred - tgt) ** 2).mean(-1) * w).sum() / w.sum()
    assert torch.allclose(loss, expected, rtol=1e-14)
    loss.backward()
    assert torch.all(pred.grad[w == 0] == 0)  # encoder-visible predictions get no gradient


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", CASES + TILE_CASES, ids=str)
def test_backend_matches_reference(backend, case, monkeypatch):
    with use(backend, monkeypatch):
        for dtype in dtypes_for(backend):
            assert_close(check_mse(case, dtype, seed=zlib.crc32(f"mse-{case}-{backend}".encode())), dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("normalize", [False, True])
def test_options_and_a_given_denominator(backend, normalize, monkeypatch):
    with use(backend, monkeypatch):
        assert_close(check_mse(CASES[0], torch.float32, normalize=normalize, denominator=7.0), torch.float32)


@pytest.mark.parametrize("backend", FUSED)
def test_zero_weighted_tokens_give_zero_not_nan(backend, monkeypatch):
    x = make_inputs(Case("all-visible", 1, 16, 4, 32, 16, 8, 0.5, 0.5))
    pred = x["pred"].float().requires_grad_()
    with use(backend, monkeypatch):
        loss = ops.masked_mse(pred, x["video"].float(), x["dec"], x["dec"], 16, 2)  # decoded == visible
    loss.backward()
    assert loss.item() == 0.0 and pred.grad.abs().sum().item() == 0.0


def op_inputs():
    x = make_inputs(CASES[1])
    forward = (x["pred"].float().requires_grad_(), x["video"].float(), x["dec"], x["p"], 2, True, 1e-6,
               list(IMAGENET_MEAN), list(IMAGENET_STD))
    backward = (torch.randn(x["dec"].shape), forward[0].detach(), *forward[1:])
    return forward, backward


@pytest.mark.parametrize("backend", FUSED)
def test_opcheck(backend, monkeypatch):
    forward, backward = op_inputs()
    with use(backend, monkeypatch):
        torch.library.opcheck(torch.ops.vmae2_fast.masked_mse_per_token.default, forward)
        torch.library.opcheck(torch.ops.vmae2_fast.masked_mse_per_token_backward.default, backward)


@pytest.mark.parametrize("backend", FUSED)
def test_refuses_a_video_gradient_and_a_wrong_prediction(backend, monkeypatch):
    x = make_inputs(CASES[0])
    with use(backend, monkeypatch):
        with pytest.raises(NotImplementedError, match="no gradient to the video"):
            ops.masked_mse(x["pred"], x["video"].requires_grad_(), x["vis"], x["dec"], 16, 2)
        with pytest.raises(ValueError, match="pred must be"):
            ops.masked_mse(x["pred"][..., :-1], x["video"].detach(), x["vis"], x["dec"], 16, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES + TILE_CASES, ids=str)
def test_triton_on_cuda(case, dtype):
    with use("triton"):
        assert_close(check_mse(case, dtype, device="cuda", seed=zlib.crc32(f"cuda-{case}".encode())), dtype)
