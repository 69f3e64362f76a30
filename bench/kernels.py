"""Fused-op benchmark: time and peak memory of each op (forward + backward), reference vs the C++
face on a CPU, reference vs Triton (and C++ where possible) on a GPU, at ViT-B and ViT-g shapes.

    python bench/kernels.py                       # CPU: reference vs cpp, batch 4
    python bench/kernels.py --device cuda --batch 32

Every (shape, op, backend) runs in a fresh process, so that its peak memory is its own: on a CPU
the growth of the process's peak RSS over the inputs, on a GPU torch.cuda.max_memory_allocated
over the inputs. Writes bench/results/kernels-<machine>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name  # noqa: E402

# name: (patch, embed dim, decoder dim); 16 frames of 224^2, tubelet 2, ratios 0.9 / 0.5
SHAPES = {"vit_b": (16, 768, 384), "vit_g": (14, 1408, 512)}
OPS = ("visible_patch_embed", "decoder_input", "masked_mse")


def _inputs(shape, batch, device, dtype):
    from vmae2_fast.masking import DualMasking
    p, ce, cd = SHAPES[shape]
    grid = (8, 224 // p, 224 // p)
    n = grid[0] * grid[1] * grid[2]
    g = torch.Generator().manual_seed(0)
    vis, dec = DualMasking(grid, 0.9, 0.5)(batch, generator=g)
    k = 3 * 2 * p * p

    def r(*s, grad=False):
        return torch.randn(*s, generator=g).to(device, dtype).requires_grad_(grad)

    return dict(video=r(batch, 3, 16, 224, 224), weight=r(ce, 3, 2, p, p, grad=True), bias=r(ce, grad=True),
                pos_e=r(1, n, ce), pos_d=r(1, n, cd), z=r(batch, vis.shape[1], ce, grad=True),
                proj=r(cd, ce, grad=True), token=r(1, 1, cd, grad=True), pred=r(batch, dec.shape[1], k, grad=True),
                vis=vis.to(device), dec=dec.to(device), p=p)


def _step(ops, op, x):
    if op == "visible_patch_embed":
        out = ops.visible_patch_embed(x["video"], x["weight"], x["bias"], x["pos_e"], x["vis"], 2)
    elif op == "decoder_input":
        out = ops.decoder_input(x["z"], x["proj"], x["pos_d"], x["vis"], x["dec"], x["token"])
    else:
        out = ops.masked_mse(x["pred"], x["video"], x["vis"], x["dec"], x["p"], 2)
    out.sum().backward()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _measure(shape, op, backend, batch, device, dtype, reps, queue):
    torch.set_num_threads(torch.get_num_threads())
    from vmae2_fast import ops
    ops.use_backend(backend)
    device = torch.device(device)
    x = _inputs(shape, batch, device, getattr(torch, dtype))
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _step(ops, op, x)
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(reps):
        for v in x.values():
            if isinstance(v, torch.Tensor):
                v.grad = None
        _sync(device)
        t0 = time.perf_counter()
        _step(ops, op, x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    queue.put(dict(shape=shape, op=op, backend=backend, ms=1e3 * statistics.median(times),
                   peak_mib=max(peak, 0) / 2 ** 20))


def run(args):
    ctx = mp.get_context("spawn")
    rows = []
    for shape in args.shapes:
        for op in OPS:
            for backend in args.backends:
                q = ctx.Queue()
                proc = ctx.Process(target=_measure, args=(shape, op, backend, args.batch, args.device,
                                                          args.dtype, args.reps, q))
                proc.start()
                proc.join()
                if proc.exitcode != 0:
                    raise SystemExit(f"{shape}/{op}/{backend} failed (exit {proc.exitcode})")
                rows.append(q.get())
                print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(meta, rows):
    ref = {(r["shape"], r["op"]): r for r in rows if r["backend"] == "reference"}
    lines = [f"# Fused ops, forward + backward: {meta['machine']}", "",
             f"batch {meta['batch']}, 16x224x224 clips, tubelet 2, mask ratio 0.9, decoder ratio 0.5, "
             f"{meta['dtype']}, {meta['threads']} threads, median of {meta['reps']}; torch {meta['torch']}. "
             "Peak memory: growth over the inputs (CPU: process peak RSS; GPU: max allocated).", "",
             "| shape | op | backend | time (ms) | speed-up | peak extra memory (MiB) | memory vs reference |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        b = ref.get((r["shape"], r["op"]))
        sp = f"{b['ms'] / r['ms']:.2f}x" if b else "-"
        mem = f"{r['peak_mib'] / b['peak_mib']:.2f}x" if b and b["peak_mib"] > 0 else "-"
        lines.append(f"| {r['shape']} | {r['op']} | {r['backend']} | {r['ms']:.1f} | {sp} | "
                     f"{r['peak_mib']:.1f} | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--backends", nargs="+", default=None,
                    help="default: reference cpp (CPU), reference triton (CUDA)")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    args.backends = args.backends or (["reference", "cpp"] if device.type == "cpu" else ["reference", "triton"])
    if "cpp" in args.backends:   # compile once here, not inside a timed child
        from vmae2_fast.ops import cpp as cpp_ops
        cpp_ops.load()
    rows = run(args)
    machine = machine_name(device)
    meta = dict(machine=machine, device=args.device, batch=args.batch, dtype=args.dtype, reps=args.reps,
                threads=torch.get_num_threads(), torch=torch.__version__)
    slug = machine.lower().replace(" ", "-").replace("(r)", "").replace("/", "-")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"kernels-{slug}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    (out / f"kernels-{slug}.md").write_text(to_markdown(meta, rows))
    print(to_markdown(meta, rows))


if __name__ == "__main__":
    main()
