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
this file reports. Writes <out>/attention-<machine>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name, machine_slug  # noqa: E402

from vmae2_fast.models.attention import attention  # noqa: E402
from vmae2_fast.models.attention_backends import BACKENDS, choose_auto, why_not  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    times = []
    for i in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        attention(*leaves, 0.0, backend).backward(grad_out)
        _sync(device)
        if i:
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


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


def markdown(report: dict) -> str:
    md = [f"# Attention backends on {report['machine']}", "",
          f"torch {report['torch']}; forward + backward of (batch, heads, tokens, head dim) = "
          f"({report['batch']}, {report['heads']}, {report['tokens']}, d), median of {report['reps']}; "
          "errors relative to the explicit computation in float64. 1-minute load average "
          f"{report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after.", "",
          "| dtype | head dim | backend | ms | vs math | output error | gradient error |",
          "|---|---|---|---:|---:|---:|---:|"]
    skipped = []
    for c in report["checks"]:
        math_ms = c["backends"]["math"].get("ms")
        for name, r in c["backends"].items():
            if not r["runs"]:
                skipped.append(f"- {c['dtype']}, head dim {c['head_dim']}, {name}: {r['why_not']}")
                continue
            star = " (auto)" if name == c["auto"] else ""
            md.append(f"| {c['dtype']} | {c['head_dim']} | {name}{star} | {r['ms']:.3f} | "
                      f"{math_ms / r['ms']:.2f}x | {r['out_rel_err']:.1e} | {r['grad_rel_err']:.1e} |")
    md += ["", "`--attention auto`: " + "; ".join(sorted({f"{c['dtype']}: {c['auto']} ({c['auto_reason']})"
                                                         for c in report["checks"]}))]
    if skipped:
        md += ["", "Backends that do not run here, and why:", "", *skipped]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default: bf16 fp16 (CUDA), fp32 (CPU)")
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 80, 88])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--tokens", type=int, default=208)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtypes = args.dtypes or (["bf16", "fp16"] if device.type == "cuda" else ["fp32"])
    load_before = os.getloadavg()[0]
    checks = [check(device, d, h, args) for d in dtypes for h in args.head_dims]
    report = {"machine": machine_name(device), "device": str(device), "torch": torch.__version__,
              "batch": args.batch, "heads": args.heads, "tokens": args.tokens, "reps": args.reps,
              "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], "checks": checks}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"attention-{machine_slug(report['machine'])}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
