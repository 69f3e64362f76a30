"""ops.visible_patch_embed: the reference against the official order of operations (Conv3d on every
token, then gather), and every backend against the float64 reference (values and gradients), as a
registered op (opcheck), under autocast, and on a CUDA device (`gpu`)."""
import zlib

import pytest
import torch
import torch.nn.functional as F

from op_cases import (CASES, FUSED, TILE_CASES, assert_close, check_embed, dtypes_for, enable_interpreter,
                      make_inputs, rel, use)
from vmae2_fast import ops
from vmae2_fast.masking import DualMasking, indices_to_mask
from vmae2_fast.ops import patch_embed

enable_interpreter()

SHAPES = [  # (B, T, H, tubelet, p, C)
    (2, 4, 32, 2, 16, 24),
    (1, 4, 28, 2, 14, 88),
    (3, 8, 56, 2, 14, 40),
]


@pytest.mark.parametrize("B,T,H,t,p,C", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_reference_equals_conv_then_gather(B, T, H, t, p, C, contiguous):
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
    got = patch_embed.reference(video, weight, bias, pos, vis, t)
    assert rel(got, expected) < 1e-12
    g = torch.randn_like(expected)
    gw, gb = torch.autograd.grad(expected, (weight, bias), g)
    hw, hb = torch.autograd.grad(got, (weight, bias), g)
    assert rel(hw, gw) < 1e-12 and rel(hb, gb) < 1e-12


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", CASES + TILE_CASES, ids=str)
def test_backend_matches_reference(backend, case, monkeypatch):
    with use(backend, monkeypatch):
        for dtype in dtypes_for(backend):
            assert_close(check_embed(case, dtype, seed=zlib.crc32(f"embed-{case}-{backend}".encode())), dtype)


def op_inputs(out_dtype=torch.float32):
    """Forward and backward arguments at patch 14, batch 1 and a width of 88 (CASES[1]);
    parameters require grad so that opcheck also checks the autograd."""
    x = make_inputs(CASES[1])
    v, w, b, p = (x["video"].float(), x["weight"].float().requires_grad_(),
                  x["bias"].float().requires_grad_(), x["pos_e"].float().requires_grad_())
    grad = torch.randn(1, x["vis"].shape[1], w.shape[0], dtype=out_dtype)
    forward = (v, w, b, p, x["vis"], 2, out_dtype)
    backward = (grad, v, w.detach(), p.detach(), x["vis"], 2, out_dtype, b.dtype, True, True, True)
    return forward, backward


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(backend, out_dtype, monkeypatch):
    """Schema, fake (shapes and dtypes under FakeTensor and dynamic shapes), the autograd
    registration and AOT dispatch agree with what the kernel does; the output dtype is an argument
    (what autocast asked for), not read inside the kernel."""
    forward, backward = op_inputs(out_dtype)
    with use(backend, monkeypatch):
        torch.library.opcheck(torch.ops.vmae2_fast.visible_patch_embed.default, forward)
        torch.library.opcheck(torch.ops.vmae2_fast.visible_patch_embed_backward.default, backward)
        assert torch.ops.vmae2_fast.visible_patch_embed(*forward).dtype == out_dtype


@pytest.mark.parametrize("backend", ["cpp", "fallback"])
def test_cpu_autocast_gives_the_reference_dtype(backend, monkeypatch):
    x = make_inputs(CASES[0])
    args = (x["video"].float(), x["weight"].float(), x["bias"].float(), x["pos_e"].float(), x["vis"], 2)
    with use(backend, monkeypatch), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = patch_embed.reference(*args)
        out = ops.visible_patch_embed(*args)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert rel(out.float(), ref.float()) < 1e-2


@pytest.mark.parametrize("backend", FUSED)
def test_refuses_a_video_gradient_and_a_wrong_weight(backend, monkeypatch):
    x = make_inputs(CASES[0])
    with use(backend, monkeypatch):
        with pytest.raises(NotImplementedError, match="no gradient to the video"):
            ops.visible_patch_embed(x["video"].requires_grad_(), x["weight"], x["bias"], x["pos_e"], x["vis"], 2)
        with pytest.raises(ValueError, match="Conv3d weight"):
            ops.visible_patch_embed(x["video"].detach(), x["weight"][:, :, :1], x["bias"], x["pos_e"], x["vis"], 2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES + TILE_CASES, ids=str)
def test_triton_on_cuda(case, dtype):
    with use("triton"):
        assert_close(check_embed(case, dtype, device="cuda", seed=zlib.crc32(f"cuda-{case}".encode())), dtype)


@pytest.mark.gpu
def test_triton_under_cuda_autocast_gives_the_reference_dtype():
    x = make_inputs(CASES[0], device="cuda")
    args = (x["video"].float().cuda(), x["weight"].float().cuda(), x["bias"].float().cuda(),
            x["pos_e"].float().cuda(), x["vis"], 2)
    with use("triton"), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = patch_embed.reference(*args)
        out = ops.visible_patch_embed(*args)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert rel(out.float(), ref.float()) < 1e-2
