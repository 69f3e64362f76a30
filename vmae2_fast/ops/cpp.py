"""The C++ (OpenMP) CPU face of the fused ops: `csrc/fused_ops.cpp`, compiled on first use.

The extension is built with `torch.utils.cpp_extension.load` into
`$VMAE2_FAST_CACHE/torch_extensions/...` (default `~/.cache/vmae2_fast`) the first time a CPU op
runs (about 30-60 s on 2 cores, logged), then loaded from there. Building at first use rather than
in setup.py keeps `pip install torch==2.13.0 -e .` a single command on a machine without torch:
an isolated build environment would otherwise pull an unpinned multi-GB torch.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import torch

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..kernels.rules import (acc_dtype, compute_dtype, masked_token_mean, num_tokens,
                             refuse_video_grad, table_grad)

log = logging.getLogger(__name__)
_module = None
_error: str | None = None


def _source() -> Path | None:
    package = Path(__file__).resolve().parent.parent        # vmae2_fast/
    # a source checkout (csrc/ beside the package) or an installed wheel (vmae2_fast/csrc/)
    for cand in (package.parent / "csrc" / "fused_ops.cpp", package / "csrc" / "fused_ops.cpp"):
        if cand.exists():
            return cand
    return None


def build_dir() -> Path:
    root = Path(os.environ.get("VMAE2_FAST_CACHE", Path.home() / ".cache" / "vmae2_fast"))
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    return root / "torch_extensions" / tag.replace("+", "_")


def load():
    """The compiled module, building it once; raises RuntimeError with the reason if impossible."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is not None:
        raise RuntimeError(_error)
    src = _source()
    try:
        if src is None:
            raise FileNotFoundError("csrc/fused_ops.cpp is not installed")
        from torch.utils import cpp_extension
        out = build_dir()
        out.mkdir(parents=True, exist_ok=True)
        first = not list(out.glob("vmae2_fast_cpu_ops*.so"))
        if first:   # on stderr, not the log: also seen by API users, and before logging is set up
            print(f"vmae2_fast: compiling the C++ CPU ops once into {out} (about a minute on 2 "
                  "cores) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        _module = cpp_extension.load(name="vmae2_fast_cpu_ops", sources=[str(src)],
                                     extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                     build_directory=str(out), verbose=False)
        if first:
            print(f"vmae2_fast: C++ CPU ops compiled in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    except Exception as exc:  # no compiler, no ninja, a build error, ...
        _error = f"the C++ CPU ops could not be built or loaded ({type(exc).__name__}: {exc})"
        raise RuntimeError(_error) from exc
    return _module


def available() -> bool:
    try:
        load()
        return True
    except RuntimeError:
        return False


class _Embed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, video, weight, bias, pos_table, vis_idx, tubelet_size):
        refuse_video_grad(video)
        ce, p = weight.shape[0], weight.shape[-1]
        out_dtype = compute_dtype(video.device, video.dtype, weight.dtype)
        out = load().embed_forward(video, weight.reshape(ce, -1), bias, pos_table.reshape(-1, ce),
                                   vis_idx, p, tubelet_size, out_dtype)
        ctx.save_for_backward(video, weight, vis_idx, pos_table)
        ctx.tub, ctx.dtype, ctx.bias_dtype = tubelet_size, out_dtype, None if bias is None else bias.dtype
        return out.view(*vis_idx.shape, ce)

    @staticmethod
    def backward(ctx, grad_out):
        video, weight, vis_idx, pos_table = ctx.saved_tensors
        ce = weight.shape[0]
        g = grad_out.reshape(-1, ce)
        gw = gb = gp = None
        if ctx.needs_input_grad[1]:  # the cubes are gathered again instead of being kept
            cubes = load().gather_cubes(video, vis_idx, weight.shape[-1], ctx.tub).to(ctx.dtype)
            gw = (g.to(ctx.dtype).t() @ cubes).view_as(weight).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            gb = g.sum(0, dtype=acc_dtype(g.dtype)).to(ctx.bias_dtype)
        if ctx.needs_input_grad[3]:
            gp = table_grad(grad_out, vis_idx, pos_table)
        return None, gw, gb, gp, None, None


class _Decoder(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
        cd = proj_weight.shape[0]
        dtype = compute_dtype(z.device, z.dtype, proj_weight.dtype)
        out = load().decoder_forward(z, proj_weight, pos_table.reshape(-1, cd), vis_idx, dec_idx,
                                     mask_token, dtype)
        ctx.save_for_backward(z, proj_weight, vis_idx, dec_idx, pos_table)
        ctx.dtype, ctx.token = dtype, (mask_token.dtype, mask_token.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, w, vis_idx, dec_idx, pos_table = ctx.saved_tensors
        nv, dt = z.shape[1], ctx.dtype
        g_vis = grad_out[:, :nv].to(dt)
        gz = gw = gp = gt = None
        if ctx.needs_input_grad[0]:
            gz = (g_vis @ w.to(dt)).to(z.dtype)
        if ctx.needs_input_grad[1]:
            gw = (g_vis.reshape(-1, w.shape[0]).t() @ z.reshape(-1, z.shape[2]).to(dt)).to(w.dtype)
        if ctx.needs_input_grad[2]:
            gp = table_grad(grad_out[:, :nv], vis_idx, pos_table)
            gp += table_grad(grad_out[:, nv:], dec_idx, pos_table)
        if ctx.needs_input_grad[5]:
            gt = grad_out[:, nv:].sum((0, 1), dtype=acc_dtype(dt)).to(ctx.token[0]).view(ctx.token[1])
        return gz, gw, gp, None, None, gt


class _MSETokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, video, dec_idx, patch_size, tubelet_size, normalize, eps, mean, std):
        refuse_video_grad(video)
        acc = acc_dtype(torch.promote_types(video.dtype, pred.dtype))
        pred_c = pred.to(acc).contiguous()
        args = (patch_size, tubelet_size, [float(x) for x in mean], [float(x) for x in std],
                bool(normalize), float(eps))
        ctx.save_for_backward(pred_c, video, dec_idx)
        ctx.args, ctx.pred_dtype = args, pred.dtype
        return load().mse_tokens(pred_c, video, dec_idx, *args, None)

    @staticmethod
    def backward(ctx, grad_tok):
        pred_c, video, dec_idx = ctx.saved_tensors
        g = load().mse_tokens(pred_c, video, dec_idx, *ctx.args, grad_tok)
        return g.to(ctx.pred_dtype), None, None, None, None, None, None, None, None


def visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size):
    return _Embed.apply(video, weight, bias, pos_table, vis_idx, tubelet_size)


def decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    return _Decoder.apply(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)


def masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size, normalize=True,
               denominator=None, eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    per_token = _MSETokens.apply(pred, video, dec_idx, patch_size, tubelet_size, normalize, eps,
                                 mean, std)
    return masked_token_mean(per_token, vis_idx, dec_idx, num_tokens(video, patch_size, tubelet_size),
                             denominator)
