"""Fused-op benchmark: time and peak memory of each op (forward + backward), reference vs the C++
face on a CPU, reference vs Triton (and C++ where possible) on a GPU, at ViT-B and ViT-g shapes.

    python bench/fused_ops.py                     # CPU: reference vs cpp, float32, batch 4
    python bench/fused_ops.py --device cuda --batch 32          # bf16, every measurement in one process

On a GPU every (shape, op, backend) runs in this one process, in bfloat16 by default (the dtype
training runs the ops in under --precision bf16; a float32 Triton dot runs on the FMA units, not
the tensor cores, so a float32 timing says little about training), and its peak memory is
torch.cuda.max_memory_allocated over the inputs. A CPU has no such counter: there each
measurement runs in its own process by default (`--processes each`), so that the growth of the
process's peak RSS over the inputs is its own; `--processes one` skips that (peak: n/a). A
measurement that fails is recorded with its error and the run goes on with the next one; the
exit status is 1 when any failed. Writes bench/results/fused-ops-<machine>.jsonl (one record per
shape, op and backend, written when it is measured) and .md (render.py). (The file is not called
kernels.py: run as a script, its folder comes first on sys.path, and transformers would import it
in place of Hugging Face's `kernels` package.)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import traceback

import torch

import harness
from harness import Records, add_out_flag, environment, read_records, result_stem, time_in_rounds

# name: (patch, embed dim, decoder dim); 16 frames of 224^2, tubelet 2, ratios 0.9 / 0.5
SHAPES = {"vit_b": (16, 768, 384), "vit_g": (14, 1408, 512)}
OPS = ("visible_patch_embed", "decoder_input", "masked_mse")
DTYPES = ("float32", "bfloat16", "float16")


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


def _no_grads(x: dict) -> None:
    for v in x.values():
        if isinstance(v, torch.Tensor):
            v.grad = None


def measure(shape, op, backend, batch, device, dtype, reps, rss_peak: bool, inputs: dict | None = None) -> dict:
    """One (shape, op, backend): the median of `reps` timed calls after one untimed call, and the
    peak memory the first call allocated above its inputs (CUDA; the process's RSS when
    `rss_peak`, which is only its own in a fresh process; else None). `inputs`: the shape's
    inputs made by an earlier call (one process: made once per shape, 150 MB of bf16 video at
    batch 32), else made here."""
    from vmae2_fast import ops
    device = torch.device(device)
    row = dict(shape=shape, op=op, backend=backend)
    x = inputs if inputs is not None else _inputs(shape, batch, device, getattr(torch, dtype))
    with ops.backend(backend):
        _no_grads(x)        # what an earlier measurement left in .grad would count in its base
        harness.sync(device)
        if device.type == "cuda":
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        _step(ops, op, x)
        harness.sync(device)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base if rss_peak else None
        timing = time_in_rounds({op: lambda: _step(ops, op, x)}, reps, 1, device, prepare=lambda _: _no_grads(x))[op]
    return {**row, "status": "ok", "ms": 1e3 * statistics.median(timing.seconds),
            "peak_mib": None if peak is None else max(peak, 0) / 2 ** 20}


def _failed(shape, op, backend, error: str) -> dict:
    return dict(shape=shape, op=op, backend=backend, status="failed", error=error[:500])


def _in_child(queue, *args):
    try:
        queue.put(measure(*args, rss_peak=True))
    except Exception as exc:        # noqa: BLE001 - reported to the parent, which records it and goes on
        queue.put(_failed(*args[:3], f"{type(exc).__name__}: {exc}"))


def _in_fresh_process(ctx, *args) -> dict:
    q = ctx.Queue()
    proc = ctx.Process(target=_in_child, args=(q, *args))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or q.empty():
        return _failed(*args[:3], f"its process ended with exit status {proc.exitcode}")
    return q.get()


def with_defaults(args):
    """The device's defaults for what was not given: on a GPU the Triton kernels in bfloat16 in
    one process, on a CPU the C++ ops in float32, one process per measurement (its peak RSS)."""
    cpu = torch.device(args.device).type == "cpu"
    args.backends = args.backends or (["reference", "cpp"] if cpu else ["reference", "triton"])
    args.dtype = args.dtype or ("float32" if cpu else "bfloat16")
    args.processes = args.processes or ("each" if cpu else "one")
    return args


def run(args):
    device = torch.device(args.device)
    with_defaults(args)
    if "cpp" in args.backends:   # compiled once here, not inside a timed call or a child
        from vmae2_fast.ops import cpp as cpp_ops
        if not cpp_ops.available():
            print("fused_ops: the C++ ops cannot be built here: their rows will say so", file=sys.stderr)
    env = environment(device)
    header = {**env, "batch": args.batch, "dtype": args.dtype, "reps": args.reps,
              "threads": torch.get_num_threads(), "processes": args.processes}
    ctx = mp.get_context("spawn")
    with Records(result_stem(args.out, "fused-ops", env["machine"]), "fused-ops", header) as records:
        for shape in args.shapes:
            inputs, no_inputs = None, None
            if args.processes == "one":
                try:
                    inputs = _inputs(shape, args.batch, device, getattr(torch, args.dtype))
                except Exception as exc:    # noqa: BLE001 - every row of the shape says why
                    no_inputs = f"its inputs could not be made: {type(exc).__name__}: {exc}"
            for op in OPS:
                for backend in args.backends:
                    what = (shape, op, backend, args.batch, args.device, args.dtype, args.reps)
                    if args.processes == "each":
                        row = _in_fresh_process(ctx, *what)
                    elif no_inputs:
                        row = _failed(shape, op, backend, no_inputs)
                    else:
                        try:
                            row = measure(*what, rss_peak=False, inputs=inputs)
                        except Exception as exc:    # noqa: BLE001 - recorded; the next measurement runs
                            traceback.print_exc()
                            row = _failed(shape, op, backend, f"{type(exc).__name__}: {exc}")
                        harness.free(device)     # what the measurement held, before the next one
                    records.add(row)
    return records.path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on CUDA, float32 on a CPU")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--backends", nargs="+", default=None,
                    help="default: reference cpp (CPU), reference triton (CUDA)")
    ap.add_argument("--processes", choices=["one", "each"],
                    help="one: every measurement in this process (the CUDA default); each: a fresh process "
                         "per measurement, for the CPU's peak RSS (the CPU default)")
    add_out_flag(ap)
    return ap


def main(argv=None) -> int:
    failed = []

    def run_and_count(args):
        path = run(args)
        failed.extend(r for r in read_records(path)[1] if r.get("status") == "failed")
        return path

    status = harness.main(build_parser(), run_and_count, argv)
    return 1 if status == 0 and failed else status


if __name__ == "__main__":
    sys.exit(main())
