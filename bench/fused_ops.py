"""Fused-op benchmark: time and peak memory of each op (forward + backward), reference vs the C++
face on a CPU, reference vs Triton (and C++ where possible) on a GPU, at ViT-B and ViT-g shapes.

    python bench/fused_ops.py                     # CPU: reference vs cpp, batch 4
    python bench/fused_ops.py --device cuda --batch 32

Every (shape, op, backend) runs in a fresh process, so that its peak memory is its own: on a CPU
the growth of the process's peak RSS over the inputs, on a GPU torch.cuda.max_memory_allocated
over the inputs. Writes bench/results/fused-ops-<machine>.jsonl (one record per shape, op and
backend, written when its process ends) and .md (render.py). (The file is not called kernels.py:
run as a script, its folder comes first on sys.path, and transformers would import it in place of
Hugging Face's `kernels` package.)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys

import torch

import harness
from harness import Records, add_out_flag, environment, result_stem, time_in_rounds

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


def _measure(shape, op, backend, batch, device, dtype, reps, queue):
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
    harness.sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base

    def no_grads(_):
        for v in x.values():
            if isinstance(v, torch.Tensor):
                v.grad = None
    timing = time_in_rounds({op: lambda: _step(ops, op, x)}, reps, 0, device, prepare=no_grads)[op]
    queue.put(dict(shape=shape, op=op, backend=backend, ms=1e3 * statistics.median(timing.seconds),
                   peak_mib=max(peak, 0) / 2 ** 20))


def run(args):
    device = torch.device(args.device)
    args.backends = args.backends or (["reference", "cpp"] if device.type == "cpu" else ["reference", "triton"])
    if "cpp" in args.backends:   # compile once here, not inside a timed child
        from vmae2_fast.ops import cpp as cpp_ops
        cpp_ops.load()
    env = environment(device)
    header = {**env, "batch": args.batch, "dtype": args.dtype, "reps": args.reps,
              "threads": torch.get_num_threads()}
    ctx = mp.get_context("spawn")
    with Records(result_stem(args.out, "fused-ops", env["machine"]), "fused-ops", header) as records:
        for shape in args.shapes:
            for op in OPS:
                for backend in args.backends:
                    q = ctx.Queue()
                    proc = ctx.Process(target=_measure, args=(shape, op, backend, args.batch, args.device,
                                                              args.dtype, args.reps, q))
                    proc.start()
                    proc.join()
                    if proc.exitcode != 0:
                        raise RuntimeError(f"{shape}/{op}/{backend} failed (exit {proc.exitcode})")
                    records.add(q.get())
    return records.path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--backends", nargs="+", default=None,
                    help="default: reference cpp (CPU), reference triton (CUDA)")
    add_out_flag(ap)
    return harness.main(ap, run, argv)


if __name__ == "__main__":
    sys.exit(main())
