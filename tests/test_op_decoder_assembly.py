"""ops.decoder_input: the reference against the official boolean-map form (project, add the
expanded table, select by masks, concatenate), and every backend against the float64 reference
(values and gradients), as a registered op (opcheck), under autocast and on CUDA (`gpu`)."""
import zlib

import pytest
import torch

from op_cases import (CASES, FUSED, TILE_CASES, assert_close, check_decoder, dtypes_for,
                      enable_interpreter, make_inputs, rel, use)
from vmae2_fast import ops
from vmae2_fast.masking import DualMasking, indices_to_mask
from vmae2_fast.ops import decoder_assembly

enable_interpreter()


@pytest.mark.parametrize("dec_ratio", [0.5, 0.0])
def test_reference_equals_official_boolean_form(dec_ratio):
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
    assert rel(decoder_assembly.reference(z, w, pos, vis, dec, tok), expected) < 1e-14


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", CASES + TILE_CASES, ids=str)
def test_backend_matches_reference(backend, case, monkeypatch):
    with use(backend, monkeypatch):
        for dtype in dtypes_for(backend):
            assert_close(check_decoder(case, dtype, seed=zlib.crc32(f"dec-{case}-{backend}".encode())), dtype)


def op_inputs(out_dtype=torch.float32):
    x = make_inputs(CASES[1])
    z, w, p, tok = (x[k].float().requires_grad_() for k in ("z", "proj", "pos_d", "token"))
    grad = torch.randn(1, x["vis"].shape[1] + x["dec"].shape[1], w.shape[0], dtype=out_dtype)
    forward = (z, w, p, x["vis"], x["dec"], tok, out_dtype)
    backward = (grad, z.detach(), w.detach(), p.detach(), x["vis"], x["dec"], tok.detach(), out_dtype,
                True, True, False, True)
    return forward, backward


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(backend, out_dtype, monkeypatch):
    forward, backward = op_inputs(out_dtype)
    with use(backend, monkeypatch):
        torch.library.opcheck(torch.ops.vmae2_fast.decoder_input.default, forward)
        torch.library.opcheck(torch.ops.vmae2_fast.decoder_input_backward.default, backward)
        assert torch.ops.vmae2_fast.decoder_input(*forward).dtype == out_dtype


@pytest.mark.parametrize("backend", ["cpp", "fallback"])
def test_cpu_autocast_gives_the_reference_dtype(backend, monkeypatch):
    x = make_inputs(CASES[0])
    args = (x["z"].float(), x["proj"].float(), x["pos_d"].float(), x["vis"], x["dec"], x["token"].float())
    with use(backend, monkeypatch), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = decoder_assembly.reference(*args)
        out = ops.decoder_input(*args)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert rel(out.float(), ref.float()) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES + TILE_CASES, ids=str)
def test_triton_on_cuda(case, dtype):
    with use("triton"):
        assert_close(check_decoder(case, dtype, device="cuda", seed=zlib.crc32(f"cuda-{case}".encode())), dtype)
