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
from ..kernels import autograd
from ..kernels.rules import acc_dtype, decoder_grads, embed_grads, refuse_video_grad

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


# ---- the face: plain functions, dtypes explicit (see vmae2_fast.kernels.autograd)
def embed_forward(video, weight, bias, pos_table, vis_idx, tubelet_size, out_dtype):
    refuse_video_grad(video)
    ce, p = weight.shape[0], weight.shape[-1]
    out = load().embed_forward(video, weight.reshape(ce, -1), bias, pos_table.reshape(-1, ce),
                               vis_idx, p, tubelet_size, out_dtype)
    return out.view(*vis_idx.shape, ce)


def embed_backward(grad_out, video, weight, pos_table, vis_idx, tubelet_size, out_dtype, bias_dtype,
                   needs):
    # the cubes are gathered again instead of being kept from the forward pass
    return embed_grads(grad_out, weight, pos_table, vis_idx, out_dtype, bias_dtype, needs,
                       cubes=lambda: load().gather_cubes(video, vis_idx, weight.shape[-1], tubelet_size))


def decoder_forward(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token, out_dtype):
    cd = proj_weight.shape[0]
    return load().decoder_forward(z, proj_weight, pos_table.reshape(-1, cd), vis_idx, dec_idx,
                                  mask_token, out_dtype)


decoder_backward = decoder_grads


def _mse_args(pred, video, patch_size, tubelet_size, normalize, eps, mean, std):
    refuse_video_grad(video)
    acc = acc_dtype(torch.promote_types(video.dtype, pred.dtype))
    return pred.to(acc).contiguous(), (patch_size, tubelet_size, [float(x) for x in mean],
                                       [float(x) for x in std], bool(normalize), float(eps))


def mse_forward(pred, video, dec_idx, patch_size, tubelet_size, normalize=True, eps=1e-6,
                mean=IMAGENET_MEAN, std=IMAGENET_STD):
    pred_c, args = _mse_args(pred, video, patch_size, tubelet_size, normalize, eps, mean, std)
    return load().mse_tokens(pred_c, video, dec_idx, *args, None)


def mse_backward(grad_tok, pred, video, dec_idx, patch_size, tubelet_size, normalize=True, eps=1e-6,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
    pred_c, args = _mse_args(pred, video, patch_size, tubelet_size, normalize, eps, mean, std)
    return load().mse_tokens(pred_c, video, dec_idx, *args, grad_tok).to(pred.dtype)


# ---- the three ops with autograd, for callers of this face alone
_face = sys.modules[__name__]


def visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size):
    return autograd.visible_patch_embed(_face, video, weight, bias, pos_table, vis_idx, tubelet_size)


def decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    return autograd.decoder_input(_face, z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)


def masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size, normalize=True,
               denominator=None, eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return autograd.masked_mse(_face, pred, video, vis_idx, dec_idx, patch_size, tubelet_size,
                               normalize, denominator, eps, mean, std)
