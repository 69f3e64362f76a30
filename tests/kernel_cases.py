"""Shared cases for the fused-op tests: every face against the float64 reference, values and grads.

Shapes are tiny (the Triton interpreter is slow) but cover patch 16 and 14, a head-dim-88-like
width, batch 1, a non-contiguous video, encoder ratios 0.9 / 0.5 and decoder ratio 0 (V1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vmae2_fast.ops import reference
from vmae2_fast.masking import DualMasking


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


CASES = [
    Case("p16-r0.9-cell0.5", 2, 16, 4, 32, 64, 32, 0.9, 0.5),
    Case("p14-b1-dim88-r0.5", 1, 14, 4, 28, 88, 44, 0.5, 0.5),
    Case("p16-v1-r0.9-dec0", 2, 16, 4, 64, 48, 40, 0.9, 0.0),
    Case("p14-noncontig-r0.5", 2, 14, 4, 28, 40, 24, 0.5, 0.5, noncontig=True),
]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def enable_interpreter() -> None:
    """Without CUDA, run the Triton kernels on the CPU interpreter. Must happen before the first
    use of the kernels (triton decides when it decorates them, on the lazy first import)."""
    import os
    import sys
    if not torch.cuda.is_available() and "vmae2_fast.kernels.embed" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def make_inputs(case: Case, seed: int = 0, device="cpu"):
    """Fresh float64 inputs for all three ops."""
    g = torch.Generator().manual_seed(seed)
    t = 2
    grid = (case.frames // t, case.size // case.patch, case.size // case.patch)
    n = grid[0] * grid[1] * grid[2]
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


def _leaf(x, dtype, device):
    return x.detach().to(device=device, dtype=dtype).requires_grad_()


def check_embed(face, case, dtype, device="cpu", seed=0):
    x = make_inputs(case, seed, device)
    w, b = (x["weight"].requires_grad_(), x["bias"].requires_grad_())
    ref = reference.visible_patch_embed(x["video"], w, b, x["pos_e"], x["vis"], x["t"])
    go = torch.randn_like(ref)
    gw, gb = torch.autograd.grad(ref, (w, b), go)
    wl, bl = _leaf(w, dtype, device), _leaf(b, dtype, device)
    out = face.visible_patch_embed(x["video"].to(device=device, dtype=dtype), wl, bl,
                                   x["pos_e"].to(device, dtype), x["vis"], x["t"])
    assert out.dtype == dtype and out.shape == ref.shape
    out.backward(go.to(device, dtype))
    return {"out": rel(out.cpu(), ref), "grad_w": rel(wl.grad.cpu(), gw), "grad_b": rel(bl.grad.cpu(), gb)}


def check_decoder(face, case, dtype, device="cpu", seed=0):
    x = make_inputs(case, seed, device)
    leaves = [x[k].requires_grad_() for k in ("z", "proj", "token")]
    ref = reference.decoder_input(leaves[0], leaves[1], x["pos_d"], x["vis"], x["dec"], leaves[2])
    go = torch.randn_like(ref)
    grads = torch.autograd.grad(ref, leaves, go)
    mine = [_leaf(v, dtype, device) for v in leaves]
    out = face.decoder_input(mine[0], mine[1], x["pos_d"].to(device, dtype), x["vis"], x["dec"], mine[2])
    assert out.dtype == dtype and out.shape == ref.shape
    out.backward(go.to(device, dtype))
    res = {"out": rel(out.cpu(), ref)}
    res.update({f"grad_{k}": rel(m.grad.cpu(), g) for k, m, g in zip(("z", "proj", "token"), mine, grads)})
    return res


def check_mse(face, case, dtype, device="cpu", seed=0, normalize=True, denominator=None):
    x = make_inputs(case, seed, device)
    pred = x["pred"].requires_grad_()
    den = None if denominator is None else torch.tensor(float(denominator), dtype=torch.float64)
    ref = reference.masked_mse(pred, x["video"], x["vis"], x["dec"], x["p"], x["t"], normalize, den)
    (g_ref,) = torch.autograd.grad(ref, pred)
    mine = _leaf(pred, dtype, device)
    out = face.masked_mse(mine, x["video"].to(device=device, dtype=dtype), x["vis"], x["dec"], x["p"],
                          x["t"], normalize=normalize,
                          denominator=None if den is None else den.to(device, torch.float32))
    assert out.ndim == 0
    out.backward()
    assert mine.grad.dtype == dtype
    return {"out": rel(out.cpu(), ref), "grad_pred": rel(mine.grad.cpu(), g_ref)}


CHECKS = {"embed": check_embed, "decoder": check_decoder, "mse": check_mse}


def assert_close(errors: dict, dtype):
    tol = TOL[dtype]
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"relative errors above {tol:g} for {dtype}: {bad} (all: {errors})"
