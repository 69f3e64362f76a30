"""Shared cases for the fused-op tests: every backend against the float64 reference differentiated
by plain autograd (the independent truth), values and gradients.

The cases cover patch 16 and 14 (ViT-g's), widths that are not multiples of the kernels' column
tiles, batch 1, a non-contiguous video, encoder ratios 0.9 / 0.6 / 0.5 and decoder ratio 0 (V1),
and, in the `tiles` cases, row counts (B x N_vis and B x N_dec) that span several of the Triton
kernels' 64-row tiles, one of them an exact multiple and the others not.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import pytest
import torch

import needs
from vmae2_fast import ops
from vmae2_fast.masking import DualMasking
from vmae2_fast.ops import cpp, decoder_assembly, masked_loss, patch_embed

ROW_TILE = 64          # BM of kernels/patch_embed.py and kernels/decoder_assembly.py


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    patch: int
    frames: int
    size: int
    enc_dim: int
    dec_dim: int
    ratio: float
    dec_ratio: float
    noncontig: bool = False

    def __str__(self):
        return self.name

    @property
    def tokens(self) -> int:
        return (self.frames // 2) * (self.size // self.patch) ** 2


CASES = [
    Case("p16-r0.9-cell0.5", 2, 16, 4, 32, 64, 32, 0.9, 0.5),
    Case("p14-b1-dim88-r0.5", 1, 14, 4, 28, 88, 44, 0.5, 0.5),
    Case("p16-v1-r0.9-dec0", 2, 16, 4, 64, 48, 40, 0.9, 0.0),
    Case("p14-noncontig-r0.5", 2, 14, 4, 28, 40, 24, 0.5, 0.5, noncontig=True),
]
# Several row tiles: B x N_vis = 156 and B x N_dec = 192 (ViT-g's patch 14, widths of 2-4 column
# tiles that are not multiples of 64); 128 and 128 rows, exact multiples, at patch 16.
TILE_CASES = [
    Case("tiles-p14-b3-r0.6", 3, 14, 4, 112, 200, 88, 0.6, 0.5),
    Case("tiles-p16-b2-r0.5", 2, 16, 4, 128, 72, 136, 0.5, 0.5),
]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def enable_interpreter() -> None:
    """Without CUDA, run the Triton kernels on the CPU interpreter. Must happen before the first
    kernel is imported (triton decides when it decorates them)."""
    if not torch.cuda.is_available() and "vmae2_fast.kernels.patch_embed" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def rows(case: Case) -> tuple[int, int]:
    """(B x N_vis, B x N_dec) of a case: the row counts the kernels tile."""
    vis, dec = DualMasking((case.frames // 2, case.size // case.patch, case.size // case.patch),
                           case.ratio, case.dec_ratio)(case.batch, generator=torch.Generator().manual_seed(0))
    return vis.numel(), dec.numel()


def make_inputs(case: Case, seed: int = 0, device="cpu"):
    """Fresh float64 inputs for all three ops."""
    g = torch.Generator().manual_seed(seed)
    t = 2
    grid = (case.frames // t, case.size // case.patch, case.size // case.patch)
    n = case.tokens
    vis, dec = DualMasking(grid, case.ratio, case.dec_ratio)(case.batch, generator=g)
    if case.noncontig:   # the HF layout (B, T, C, H, W) seen as (B, C, T, H, W): a strided view
        video = torch.randn(case.batch, case.frames, 3, case.size, case.size, generator=g,
                            dtype=torch.float64).permute(0, 2, 1, 3, 4)
    else:
        video = torch.randn(case.batch, 3, case.frames, case.size, case.size, generator=g,
                            dtype=torch.float64)
    k = 3 * t * case.patch ** 2

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    return dict(
        video=video, vis=vis.to(device), dec=dec.to(device), t=t, p=case.patch,
        weight=r(case.enc_dim, 3, t, case.patch, case.patch) * k ** -0.5, bias=r(case.enc_dim),
        pos_e=r(1, n, case.enc_dim), pos_d=r(1, n, case.dec_dim),
        z=r(case.batch, vis.shape[1], case.enc_dim), proj=r(case.dec_dim, case.enc_dim) * case.enc_dim ** -0.5,
        token=r(1, 1, case.dec_dim) * 0.02, pred=r(case.batch, dec.shape[1], k),
    )


# ------------------------------------------------------------------------------------- backends
FUSED = ["cpp", "triton", "fallback"]


@contextlib.contextmanager
def use(name: str, monkeypatch=None):
    """Run the block on backend `name`; 'fallback' is 'auto' with no C++ ops built, where the
    registered ops run the reference's forward and the closed-form backward. Skips (locally) or
    fails (CI) where the backend is not installed: see needs.py."""
    if name == "cpp":
        needs.cpp_ops()
    elif name == "triton":
        needs.triton_kernels()
    with contextlib.ExitStack() as stack:
        if name == "fallback":
            mp = stack.enter_context(pytest.MonkeyPatch.context()) if monkeypatch is None else monkeypatch
            mp.setattr(cpp, "_module", None)
            mp.setattr(cpp, "_error", "the C++ CPU ops could not be built (test)")
        stack.enter_context(ops.backend("auto" if name == "fallback" else name))
        yield


def _leaf(x, dtype, device):
    return x.detach().to(device=device, dtype=dtype).requires_grad_()


def check_embed(case, dtype, device="cpu", seed=0):
    """Relative errors of ops.visible_patch_embed (the selected backend) against the float64
    reference under autograd: output and the weight and bias gradients."""
    x = make_inputs(case, seed, device)
    w, b, pe = (x["weight"].requires_grad_(), x["bias"].requires_grad_(), x["pos_e"].requires_grad_())
    ref = patch_embed.reference(x["video"], w, b, pe, x["vis"], x["t"])
    go = torch.randn_like(ref)
    gw, gb, gp = torch.autograd.grad(ref, (w, b, pe), go)
    wl, bl, pl = _leaf(w, dtype, device), _leaf(b, dtype, device), _leaf(pe, dtype, device)
    out = ops.visible_patch_embed(x["video"].to(device=device, dtype=dtype), wl, bl, pl, x["vis"], x["t"])
    assert out.dtype == dtype and out.shape == ref.shape
    out.backward(go.to(device, dtype))
    return {"out": rel(out.cpu(), ref), "grad_w": rel(wl.grad.cpu(), gw), "grad_b": rel(bl.grad.cpu(), gb),
            "grad_pos": rel(pl.grad.cpu(), gp)}


def check_decoder(case, dtype, device="cpu", seed=0):
    x = make_inputs(case, seed, device)
    leaves = [x[k].requires_grad_() for k in ("z", "proj", "pos_d", "token")]
    ref = decoder_assembly.reference(leaves[0], leaves[1], leaves[2], x["vis"], x["dec"], leaves[3])
    go = torch.randn_like(ref)
    grads = torch.autograd.grad(ref, leaves, go)
    mine = [_leaf(v, dtype, device) for v in leaves]
    out = ops.decoder_input(mine[0], mine[1], mine[2], x["vis"], x["dec"], mine[3])
    assert out.dtype == dtype and out.shape == ref.shape
    out.backward(go.to(device, dtype))
    res = {"out": rel(out.cpu(), ref)}
    res.update({f"grad_{k}": rel(m.grad.cpu(), g)
                for k, m, g in zip(("z", "proj", "pos", "token"), mine, grads)})
    return res


def check_mse(case, dtype, device="cpu", seed=0, normalize=True, denominator=None):
    x = make_inputs(case, seed, device)
    pred = x["pred"].requires_grad_()
    den = None if denominator is None else torch.tensor(float(denominator), dtype=torch.float64)
    ref = masked_loss.reference(pred, x["video"], x["vis"], x["dec"], x["p"], x["t"], normalize, den)
    (g_ref,) = torch.autograd.grad(ref, pred)
    mine = _leaf(pred, dtype, device)
    out = ops.masked_mse(mine, x["video"].to(device=device, dtype=dtype), x["vis"], x["dec"], x["p"],
                         x["t"], normalize=normalize,
                         denominator=None if den is None else den.to(device, torch.float32))
    assert out.ndim == 0
    out.backward()
    assert mine.grad.dtype == dtype
    return {"out": rel(out.cpu(), ref), "grad_pred": rel(mine.grad.cpu(), g_ref)}


def assert_close(errors: dict, dtype):
    tol = TOL[dtype]
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"relative errors above {tol:g} for {dtype}: {bad} (all: {errors})"


def dtypes_for(backend: str):
    """The dtypes each backend is checked in on the CPU (the interpreter is slow: fewer there)."""
    if backend == "triton":
        return [torch.float32, torch.bfloat16]
    return [torch.float64, torch.float32, torch.bfloat16]
