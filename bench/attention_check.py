"""Attention-backend check: which backends run on this device, what `--attention auto` picks, how
far each is from the explicit computation in float64, and how long a forward + backward takes.

    python bench/attention_check.py --device cuda                 # bf16 and fp16, head dims 64 / 80 / 88
    python bench/attention_check.py --device cpu --batch 1 --tokens 64 --reps 2

For every (dtype, head dim) it asks `models.attention_backends.why_not` about every backend (a
tiny forward and backward pass: the kernels' own checks decide) and times the ones that run at an
encoder's shape: by default ViT-g's visible tokens (2048 cubes x 0.1 -> 205, padded to 208) in
16 heads, batch 8; head dim 64 is ViT-S/B/L and every decoder, 80 ViT-H, 88 ViT-g. Errors are
relative Frobenius errors against `attention(..., "math")` in float64 on the same inputs (output,
and the worst of the q/k/v gradients). tests/test_attention_backends.py holds the tolerances;
this file reports. Writes <out>/attention-<machine>.jsonl (one record per dtype and head dim,
written when it is checked) and .md (render.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

import harness
from harness import Records, add_out_flag, environment, result_stem, time_in_rounds

from vmae2_fast.models.attention import attention
from vmae2_fast.models.attention_backends import BACKENDS, choose_auto, why_not

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _errors(backend, q, k, v, grad_out) -> tuple[float, float]:
    """(output error, worst gradient error) of `backend` against float64 math."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    got = attention(*leaves, 0.0, backend)
    want = attention(*exact, 0.0, "math")
    got.backward(grad_out)
    want.backward(grad_out.double())
    rel = [float((a.double() - b).norm() / b.norm()) for a, b in
           [(got.detach(), want.detach()), *((x.grad, y.grad) for x, y in zip(leaves, exact))]]
    return rel[0], max(rel[1:])


def _time(backend, q, k, v, grad_out, reps: int, device) -> float:
    """Median milliseconds of one forward + backward (after one warm-up call)."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    timing = time_in_rounds({backend: lambda: attention(*leaves, 0.0, backend).backward(grad_out)},
                            reps, 1, device)[backend]
    return 1e3 * statistics.median(timing.seconds)


def check(device, dtype_name: str, head_dim: int, args) -> dict:
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, args.tokens, head_dim)
    q, k, v, grad_out = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(4))
    auto, reason = choose_auto(device, dtype, head_dim)
    rows = {}
    for name in (b for b in BACKENDS if b != "auto"):
        why = why_not(name, device, dtype, head_dim)
        if why is not None:
            rows[name] = {"runs": False, "why_not": why}
            continue
        out_err, grad_err = _errors(name, q, k, v, grad_out)
        rows[name] = {"runs": True, "ms": _time(name, q, k, v, grad_out, args.reps, device),
                      "out_rel_err": out_err, "grad_rel_err": grad_err}
    return {"dtype": dtype_name, "head_dim": head_dim, "shape": list(shape), "auto": auto,
            "auto_reason": reason, "backends": rows}


def run(args):
    device = torch.device(args.device)
    dtypes = args.dtypes or (["bf16", "fp16"] if device.type == "cuda" else ["fp32"])
    env = environment(device)
    header = {**env, "batch": args.batch, "heads": args.heads, "tokens": args.tokens, "reps": args.reps}
    with Records(result_stem(args.out, "attention", env["machine"]), "attention", header) as records:
        for d in dtypes:
            for h in args.head_dims:
                records.add(check(device, d, h, args))
    return records.path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default: bf16 fp16 (CUDA), fp32 (CPU)")
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 80, 88])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--tokens", type=int, default=208)
    p.add_argument("--reps", type=int, default=10)
    add_out_flag(p)
    return harness.main(p, run, argv)


if __name__ == "__main__":
    sys.exit(main())
